"""What one node's dataplane should hold, computed by the agent's own code rather than re-derived.

The cluster's resources go through the `Calculator` (resources → dataplane messages), the messages
through `ManagerDispatch` into a real `WireguardManager`, and the manager programs an in-memory
`FakeKernel`. What the fake kernel then holds is, by construction, what the agent programs for the
same datastore and configuration: the peers (key, endpoint, allowed IPs, keepalive), every route of
our table (device route or throw route), the rule and the device address. `meshcrypt doctor`
compares the real node with it, so doctor and agent cannot disagree about the rules (which nodes
are peers, which CIDRs a peer gets, host addresses only with host encryption, shared keys, ...).

The simulated device gets its own key; key checks compare the real device with the datastore.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from meshcrypt.calc import Calculator
from meshcrypt.fakes import FakeKernel
from meshcrypt.model.config import FelixConfig, WireguardFamilyConfig
from meshcrypt.model.dataplane import Endpoint, RouteKind, Rule
from meshcrypt.model.errors import WaitingForLink
from meshcrypt.model.keys import Key
from meshcrypt.model.net import CIDR, IPAddress, IPFamily
from meshcrypt.ops.cluster import ClusterResources
from meshcrypt.wireguard.dispatch import ManagerDispatch
from meshcrypt.wireguard.manager import WireguardManager

# Any valid name will do; the real one may hold characters the fake kernel refuses (":").
_SIM_IFACE = "wg-expected"
_APPLY_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class ExpectedPeer:
    node: str
    public_key: Key
    endpoint: Endpoint | None
    allowed_ips: frozenset[CIDR]
    persistent_keepalive: int


@dataclass(frozen=True, slots=True)
class ExpectedRoute:
    dst: CIDR
    kind: RouteKind
    node: str | None  # the node the CIDR belongs to


@dataclass(frozen=True, slots=True)
class ExpectedFamily:
    family: IPFamily
    peers: dict[Key, ExpectedPeer]
    routes: dict[CIDR, ExpectedRoute]
    rule: Rule | None
    addresses: frozenset[IPAddress]
    not_peers: dict[str, str]  # remote nodes the agent does not make peers, with the reason


def _simulate(
    hostname: str, config: FelixConfig, cluster: ClusterResources, family: IPFamily
) -> tuple[WireguardManager, FakeKernel, WireguardFamilyConfig]:
    """A manager fed with the cluster's messages, applied on an in-memory kernel."""
    calc = Calculator(hostname)
    for name, node in cluster.nodes.items():
        calc.on_node(name, node)
    for key, pool in cluster.pools.items():
        calc.on_pool(key, pool)
    for key, block in cluster.blocks.items():
        calc.on_block(key, block)
    for key, wep in cluster.workloads.items():
        calc.on_workload(key, wep)
    kernel = FakeKernel(immediate_link_up=True)
    family_config = dataclasses.replace(
        config.for_family(family, mtu=0), enabled=True, interface_name=_SIM_IFACE
    )
    manager = WireguardManager(
        hostname,
        family_config,
        netlink=kernel.netlink_factory(),
        wireguard=kernel.wireguard_factory(),
        sysfs=kernel.sysfs,
        status_callback=lambda _key: None,
    )
    dispatch = ManagerDispatch(manager)
    # The simulation is quiet: its "created device", "added peer" lines are not the node's.
    quiet = logging.getLogger("meshcrypt.wireguard")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        for msg in calc.flush():
            dispatch.on_update(msg)
        for _ in range(_APPLY_ATTEMPTS):
            try:
                manager.apply()
                break
            except WaitingForLink:
                continue
    finally:
        quiet.setLevel(level)
    return manager, kernel, family_config


def expected_family(
    hostname: str, config: FelixConfig, cluster: ClusterResources, family: IPFamily
) -> ExpectedFamily:
    """The dataplane the agent on `hostname` programs for `family` (which must be enabled)."""
    manager, kernel, family_config = _simulate(hostname, config, cluster, family)
    owners = {cidr: name for name, data in manager.nodes.items() for cidr in data.cidrs}
    peers: dict[Key, ExpectedPeer] = {}
    for key, peer in kernel.device(_SIM_IFACE).peers.items():
        node = manager.peer_node_for_key(key)
        assert node is not None
        peers[key] = ExpectedPeer(
            node, key, peer.endpoint, frozenset(peer.allowed_ips), peer.persistent_keepalive
        )
    routes = {
        r.dst: ExpectedRoute(r.dst, r.kind, owners.get(r.dst))
        for r in kernel.routes_in(family_config.routing_table, family)
    }
    rules = [r for r in kernel.rules_of(family) if r.table == family_config.routing_table]
    addresses = frozenset(
        a.address
        for a in kernel.addresses_of(_SIM_IFACE, family)
        if not (a.address.version == 6 and a.address.is_link_local)
    )
    not_peers: dict[str, str] = {}
    shared = set(manager.shared_key_nodes)
    for name, data in sorted(manager.nodes.items()):
        if name == hostname or any(p.node == name for p in peers.values()):
            continue
        if data.public_key.is_zero:
            not_peers[name] = f"no {family.label} public key published"
        elif name in shared:
            not_peers[name] = "its public key is shared with another node"
        elif data.endpoint is None:
            not_peers[name] = f"no {family.label} node address"
        else:
            not_peers[name] = "not programmed"
    rule = rules[0] if rules else None
    return ExpectedFamily(family, peers, routes, rule, addresses, not_peers)
