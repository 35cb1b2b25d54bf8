"""The calculator's messages drive a real WireGuard manager (on the fake kernel) to the right mesh.

This checks the calculation against its consumer, `meshcrypt.wireguard.dispatch`, rather than
against our own reading of the message format.
"""

from __future__ import annotations

import ipaddress

import pytest

from meshcrypt.calc import Calculator
from meshcrypt.model.dataplane import RouteKind
from meshcrypt.model.keys import Key
from meshcrypt.model.net import IPFamily
from meshcrypt.model.resources import IPAMBlockResource, NodeResource, WorkloadEndpointResource
from meshcrypt.wireguard.dispatch import ManagerDispatch
from tests.unit.wireguard.harness import HOST, Harness, key


def _node(h: Harness, name: str, addr: str, tunnel: str, node_key: Key | None) -> NodeResource:
    iface = f"{h.ip(addr)}/{24 if h.family is IPFamily.V4 else 120}"
    if h.family is IPFamily.V4:
        return NodeResource(
            name,
            ipv4_address=ipaddress.IPv4Interface(iface),
            wireguard_ipv4=ipaddress.IPv4Address(h.ip(tunnel)),
            public_key=node_key,
        )
    return NodeResource(
        name,
        ipv6_address=ipaddress.IPv6Interface(iface),
        wireguard_ipv6=ipaddress.IPv6Address(h.ip(tunnel)),
        public_key_v6=node_key,
    )


@pytest.fixture(params=list(IPFamily), ids=lambda f: f.label)
def h(request: pytest.FixtureRequest) -> Harness:
    # Host encryption off, as in a default cluster: host routes must then stay out of the tunnel.
    return Harness(request.param, host_encryption=False)


def test_calculated_messages_program_peers_allowed_ips_and_routes(h: Harness) -> None:
    h.start()
    calc = Calculator(HOST)
    dispatch = ManagerDispatch(h.manager)

    def sync() -> None:
        for msg in calc.flush():
            dispatch.on_update(msg)
        h.manager.apply()

    k1, k2 = key(), key()
    calc.on_node(HOST, _node(h, HOST, "1.2.3.4", "10.65.0.1", h.published[0]))
    calc.on_node("peer1", _node(h, "peer1", "1.2.3.5", "10.65.1.1", k1))
    calc.on_node("peer2", _node(h, "peer2", "1.2.3.6", "10.65.2.1", k2))
    calc.on_node("peer3", _node(h, "peer3", "1.2.3.7", "10.65.3.1", None))
    for n, owner in enumerate([HOST, "peer1", "peer2", "peer3"]):
        calc.on_block(f"b{n}", IPAMBlockResource(h.cidr(f"10.65.{n}.0/26"), owner))
    # A workload on peer2 with an address borrowed from peer1's block.
    calc.on_workload("ns/a", WorkloadEndpointResource("ns/a", "peer2", (h.cidr("10.65.1.9/32"),)))
    sync()

    peers = h.peers()
    assert set(peers) == {k1, k2}
    assert peers[k1].endpoint == h.endpoint("1.2.3.5")
    assert h.allowed(k1) == {h.cidr("10.65.1.0/26"), h.cidr("10.65.1.1/32")}
    assert h.allowed(k2) == {
        h.cidr("10.65.2.0/26"),
        h.cidr("10.65.2.1/32"),
        h.cidr("10.65.1.9/32"),
    }
    kinds = h.route_kinds()
    assert kinds[h.cidr("10.65.1.0/26")] is RouteKind.DEVICE
    assert kinds[h.cidr("10.65.3.0/26")] is RouteKind.THROW  # peer3 has no key
    assert kinds[h.cidr("10.65.0.0/26")] is RouteKind.THROW  # local block: main-table routing
    assert h.cidr("1.2.3.5/32") not in kinds  # host addresses stay out without host encryption

    # peer1 loses its key: its CIDRs become throw routes; peer2 is deleted: its peer goes.
    calc.on_node("peer1", _node(h, "peer1", "1.2.3.5", "10.65.1.1", None))
    calc.on_node("peer2", None)
    calc.on_block("b2", None)
    calc.on_workload("ns/a", None)
    sync()
    assert set(h.peers()) == set()
    kinds = h.route_kinds()
    assert kinds[h.cidr("10.65.1.0/26")] is RouteKind.THROW
    assert h.cidr("10.65.2.0/26") not in kinds
    assert h.cidr("10.65.1.9/32") not in kinds
