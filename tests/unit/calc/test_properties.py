"""Random event sequences: the messages, replayed, always describe the state computed from scratch.

The oracle below is written independently of the calculator: it knows nothing of dirty sets or
indexes, and answers every containment question by scanning everything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcrypt.calc import Calculator
from meshcrypt.model.messages import (
    HostMetadataUpdate,
    RouteType,
    RouteUpdate,
    WireguardEndpointUpdate,
    WireguardEndpointV6Update,
)
from meshcrypt.model.net import CIDR, IPAddress
from meshcrypt.model.resources import (
    IPAMBlockResource,
    IPInterface,
    IPPoolResource,
    NodeResource,
    WorkloadEndpointResource,
)
from tests.unit.calc.replay import LOCAL, Replayed, key

NODES = [LOCAL, "n1", "n2"]
# Few addresses, so host, tunnel and endpoint addresses collide and blocks overlap.
V4_IPS = [ipaddress.IPv4Address(f"10.0.0.{i}") for i in range(4)]
V6_IPS = [ipaddress.IPv6Address(f"fd00::{i}") for i in range(4)]
BLOCKS: dict[str, CIDR] = {
    "b0": ipaddress.ip_network("10.0.0.0/31"),
    "b1": ipaddress.ip_network("10.0.0.2/31"),
    "b2": ipaddress.ip_network("10.0.0.0/30"),
    "b3": ipaddress.ip_network("10.0.0.0/31"),  # the same CIDR as b0 under another key
    "b4": ipaddress.ip_network("fd00::/127"),
    "b5": ipaddress.ip_network("fd00::/126"),
}
POOL_CIDRS: list[CIDR] = [
    ipaddress.ip_network(c) for c in ("10.0.0.0/30", "10.0.0.0/29", "10.0.0.2/31", "fd00::/126")
]

ips = st.sampled_from(V4_IPS + V6_IPS)
node_names = st.sampled_from(NODES)
keys = st.none() | st.integers(1, 3).map(key)


@st.composite
def nodes(draw: st.DrawFn, name: str) -> NodeResource:
    v4 = draw(st.none() | st.tuples(st.sampled_from(V4_IPS), st.sampled_from([24, 32])))
    v6 = draw(st.none() | st.tuples(st.sampled_from(V6_IPS), st.sampled_from([64, 128])))
    return NodeResource(
        name=name,
        ipv4_address=None if v4 is None else ipaddress.IPv4Interface(f"{v4[0]}/{v4[1]}"),
        ipv6_address=None if v6 is None else ipaddress.IPv6Interface(f"{v6[0]}/{v6[1]}"),
        addresses=tuple(draw(st.lists(ips, max_size=2))),
        wireguard_ipv4=draw(st.none() | st.sampled_from(V4_IPS)),
        wireguard_ipv6=draw(st.none() | st.sampled_from(V6_IPS)),
        public_key=draw(keys),
        public_key_v6=draw(keys),
    )


def blocks(cidr: CIDR) -> st.SearchStrategy[IPAMBlockResource]:
    return st.builds(IPAMBlockResource, st.just(cidr), st.none() | node_names, st.booleans())


def workloads(name: str) -> st.SearchStrategy[WorkloadEndpointResource]:
    host_nets = ips.map(ipaddress.ip_network)
    return st.builds(
        WorkloadEndpointResource,
        st.just(name),
        node_names,
        st.lists(host_nets, max_size=3).map(tuple),
    )


def pools(name: str) -> st.SearchStrategy[IPPoolResource]:
    return st.builds(IPPoolResource, st.just(name), st.sampled_from(POOL_CIDRS), st.just(26))


Event = tuple[str, str, object]


NODE_VALUES = {name: nodes(name) for name in NODES}
BLOCK_VALUES = {name: blocks(cidr) for name, cidr in BLOCKS.items()}
POOL_VALUES = {name: pools(name) for name in ("p1", "p2")}
WORKLOAD_VALUES = {name: workloads(name) for name in ("ns/w1", "ns/w2", "ns/w3")}
KINDS: dict[str, tuple[str, Mapping[str, st.SearchStrategy[object]]]] = {
    "node": ("on_node", NODE_VALUES),
    "block": ("on_block", BLOCK_VALUES),
    "pool": ("on_pool", POOL_VALUES),
    "workload": ("on_workload", WORKLOAD_VALUES),
}


@st.composite
def events(draw: st.DrawFn) -> Event | None:
    """One `on_*` call (an upsert three times out of four, else a delete), or None for a flush
    (one event in three)."""
    kind = draw(st.sampled_from(["node", "block", "workload", "pool", "flush", "flush"]))
    if kind == "flush":
        return None
    method, values = KINDS[kind]
    name = draw(st.sampled_from(sorted(values)))
    value = None if draw(st.integers(0, 3)) == 0 else draw(values[name])
    return (method, name, value)


@dataclass
class World:
    """The final resources, as the datastore would hold them."""

    on_node: dict[str, NodeResource] = field(default_factory=dict)
    on_block: dict[str, IPAMBlockResource] = field(default_factory=dict)
    on_pool: dict[str, IPPoolResource] = field(default_factory=dict)
    on_workload: dict[str, WorkloadEndpointResource] = field(default_factory=dict)

    def record(self, method: str, name: str, value: object) -> None:
        table: dict[str, object] = getattr(self, method)
        if value is None:
            table.pop(name, None)
        else:
            table[name] = value


# --- the oracle ---------------------------------------------------------------------------------


def _iface(n: NodeResource, version: int) -> IPInterface | None:
    bgp = n.ipv4_address if version == 4 else n.ipv6_address
    if bgp is not None:
        return bgp
    found = [a for a in n.addresses if a.version == version]
    return ipaddress.ip_interface(found[0]) if found else None


def _ip_of(nodes_: Mapping[str, NodeResource], name: str, version: int) -> str:
    n = nodes_.get(name)
    iface = None if n is None else _iface(n, version)
    return "" if iface is None else str(iface.ip)


@dataclass(frozen=True)
class Claim:
    rank: int  # host 4, tunnel 3, endpoint 2, block 1, pool 0
    node: str
    key: str
    bit: RouteType
    borrowed: bool = False
    tunnel: bool = False


def _contains(outer: CIDR, inner: CIDR) -> bool:
    return (
        outer.version == inner.version
        and outer.prefixlen <= inner.prefixlen
        and int(inner.network_address) >> (outer.max_prefixlen - outer.prefixlen)
        == int(outer.network_address) >> (outer.max_prefixlen - outer.prefixlen)
    )


def _bit(node_name: str, local: RouteType, remote: RouteType) -> RouteType:
    return local if node_name == LOCAL else remote


def _claims(world: World) -> dict[CIDR, list[Claim]]:
    """Every (CIDR, source) pair, found by scanning everything."""
    affine = {k: b for k, b in world.on_block.items() if b.node and not b.deleted}
    claims: dict[CIDR, list[Claim]] = {}
    workload = (RouteType.LOCAL_WORKLOAD, RouteType.REMOTE_WORKLOAD)
    for k, b in affine.items():
        assert b.node is not None
        claims.setdefault(b.cidr, []).append(Claim(1, b.node, k, _bit(b.node, *workload)))
    for k, w in world.on_workload.items():
        for net in set(w.ip_networks):
            holders = sorted(
                (-b.cidr.prefixlen, bk, b.node)
                for bk, b in affine.items()
                if _contains(b.cidr, net)
            )
            borrowed = bool(holders) and holders[0][2] != w.node
            claims.setdefault(net, []).append(
                Claim(2, w.node, k, _bit(w.node, *workload), borrowed=borrowed)
            )
    for name, n in world.on_node.items():
        host_ips: set[IPAddress] = set(n.addresses)
        host_ips |= {i.ip for i in (n.ipv4_address, n.ipv6_address) if i is not None}
        for ip in host_ips:
            claims.setdefault(ipaddress.ip_network(ip), []).append(
                Claim(4, name, name, _bit(name, RouteType.LOCAL_HOST, RouteType.REMOTE_HOST))
            )
        tunnel_bit = _bit(name, RouteType.LOCAL_TUNNEL, RouteType.REMOTE_TUNNEL)
        for tunnel_ip in (n.wireguard_ipv4, n.wireguard_ipv6):
            if tunnel_ip is not None:
                claims.setdefault(ipaddress.ip_network(tunnel_ip), []).append(
                    Claim(3, name, name, tunnel_bit, tunnel=True)
                )
    for name, p in world.on_pool.items():
        if not any(_contains(p.cidr, b.cidr) for b in affine.values()):
            claims.setdefault(p.cidr, []).append(Claim(0, "", name, RouteType.CIDR_INFO))
    return claims


def from_scratch(world: World) -> Replayed:
    state = Replayed()
    for name, n in world.on_node.items():
        v4, v6 = _iface(n, 4), _iface(n, 6)
        if v4 or v6:
            state.hosts[name] = HostMetadataUpdate(name, str(v4 or ""), str(v6 or ""))
        if n.public_key:
            state.v4[name] = WireguardEndpointUpdate(
                name, n.public_key.to_base64(), str(n.wireguard_ipv4 or "")
            )
        if n.public_key_v6:
            state.v6[name] = WireguardEndpointV6Update(
                name, n.public_key_v6.to_base64(), str(n.wireguard_ipv6 or "")
            )
    for net, cl in _claims(world).items():
        best = min(cl, key=lambda c: (-c.rank, c.node, c.key))
        types = RouteType.CIDR_INFO
        for c in cl:
            types |= c.bit
        state.routes[str(net)] = RouteUpdate(
            str(net),
            types,
            best.node,
            _ip_of(world.on_node, best.node, net.version) if best.node else "",
            borrowed=any(c.borrowed for c in cl),
            tunnel_wireguard=any(c.tunnel for c in cl),
        )
    return state


# --- the property -------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.lists(events(), min_size=20, max_size=100))
def test_replayed_messages_equal_the_state_computed_from_scratch(
    script: list[Event | None],
) -> None:
    calc = Calculator(LOCAL)
    world = World()
    replayed = Replayed()  # also checks every flush is minimal (no repeats, no phantom removals)
    for event in script:
        if event is None:
            replayed.apply(calc.flush())
            assert replayed == from_scratch(world)
            continue
        method, name, value = event
        getattr(calc, method)(name, value)
        world.record(method, name, value)
    replayed.apply(calc.flush())
    assert replayed == from_scratch(world)
    assert calc.flush() == []
    from_snapshot = Replayed()
    from_snapshot.apply(calc.snapshot())
    assert from_snapshot == replayed


@settings(max_examples=100)
@given(st.lists(events(), min_size=20, max_size=100))
def test_a_fresh_calculator_fed_the_final_resources_agrees(script: list[Event | None]) -> None:
    calc = Calculator(LOCAL)
    world = World()
    replayed = Replayed()
    for event in script:
        if event is None:
            replayed.apply(calc.flush())
            continue
        method, name, value = event
        getattr(calc, method)(name, value)
        world.record(method, name, value)
    replayed.apply(calc.flush())

    fresh = Calculator(LOCAL)
    for method in ("on_pool", "on_block", "on_workload", "on_node"):
        for name, value in getattr(world, method).items():
            getattr(fresh, method)(name, value)
    from_fresh = Replayed()
    from_fresh.apply(fresh.flush())
    assert replayed == from_fresh
