"""Dataplane message dispatch (§1.3), per family, including our deliberate differences."""

from __future__ import annotations

import pytest

from meshcrypt.model.dataplane import RouteKind
from meshcrypt.model.messages import (
    DataplaneMessage,
    HostMetadataRemove,
    HostMetadataUpdate,
    RouteRemove,
    RouteType,
    RouteUpdate,
    WireguardEndpointRemove,
    WireguardEndpointUpdate,
    WireguardEndpointV6Remove,
    WireguardEndpointV6Update,
)
from meshcrypt.model.net import IPFamily
from meshcrypt.wireguard.dispatch import ManagerDispatch, dispatch_all
from tests.unit.wireguard.harness import Harness, key


def _key_msg(
    h: Harness, host: str, k: str, addr: str = ""
) -> WireguardEndpointUpdate | WireguardEndpointV6Update:
    if h.family is IPFamily.V4:
        return WireguardEndpointUpdate(host, k, addr)
    return WireguardEndpointV6Update(host, k, addr)


def _host_msg(h: Harness, host: str, addr: str) -> HostMetadataUpdate:
    if h.family is IPFamily.V4:
        return HostMetadataUpdate(host, ipv4_addr=addr)
    return HostMetadataUpdate(host, ipv6_addr=addr)


@pytest.fixture
def d(h: Harness) -> ManagerDispatch:
    h.kernel.immediate_link_up = True
    h.manager.apply()
    return ManagerDispatch(h.manager)


def test_full_peer_from_messages(h: Harness, d: ManagerDispatch) -> None:
    k = key()
    d.on_update(_host_msg(h, "peer1", f"{h.ip('1.2.3.5')}/24"))
    d.on_update(_key_msg(h, "peer1", str(k), str(h.ip("10.65.1.1"))))
    block, tunnel = h.cidr("10.65.1.0/26"), h.cidr("10.65.1.1/32")
    d.on_update(RouteUpdate(str(block), RouteType.REMOTE_WORKLOAD, "peer1"))
    d.on_update(RouteUpdate(str(tunnel), RouteType.REMOTE_TUNNEL, "peer1", tunnel_wireguard=True))
    host = h.cidr("1.2.3.5/32")
    d.on_update(RouteUpdate(str(host), RouteType.REMOTE_HOST, "peer1"))  # host encryption is on
    h.manager.apply()
    assert h.allowed(k) == {block, tunnel, host}
    assert h.peers()[k].endpoint == h.endpoint("1.2.3.5")
    assert set(h.route_kinds().values()) == {RouteKind.DEVICE}


def test_other_family_messages_ignored(h: Harness, d: ManagerDispatch) -> None:
    other = IPFamily.V6 if h.family is IPFamily.V4 else IPFamily.V4
    o = Harness(other)
    k = key()
    d.on_update(_host_msg(o, "peer1", str(o.ip("1.2.3.5"))))
    d.on_update(_key_msg(o, "peer1", str(k)))
    d.on_update(RouteUpdate(str(o.cidr("10.65.1.0/26")), RouteType.REMOTE_WORKLOAD, "peer1"))
    h.manager.apply()
    assert h.peers() == {}
    assert h.manager.nodes == {}


def test_bad_input_logged_and_ignored(
    h: Harness, d: ManagerDispatch, caplog: pytest.LogCaptureFixture
) -> None:
    d.on_update(RouteUpdate("not-a-cidr", RouteType.REMOTE_WORKLOAD, "peer1"))
    d.on_update(RouteRemove("10.0.0.1/8"))  # host bits set
    d.on_update(_host_msg(h, "peer1", "999.1.1.1"))
    d.on_update(_key_msg(h, "peer1", "not base64!"))
    h.manager.apply()
    assert h.peers() == {}
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    # Route texts without a colon are the IPv4 dispatcher's to parse and report; the IPv6 one
    # skips them unparsed (each route is parsed once, not once per family).
    assert len(warnings) == (4 if h.family is IPFamily.V4 else 2)


def test_remote_host_without_host_encryption_removes(family: IPFamily) -> None:
    """Deliberate difference: REMOTE_HOST-only updates remove the CIDR when host encryption is off."""
    h = Harness(family, host_encryption=False)
    h.kernel.immediate_link_up = True
    d = ManagerDispatch(h.manager)
    k, c = key(), h.cidr("10.65.1.0/26")
    d.on_update(_host_msg(h, "peer1", str(h.ip("1.2.3.5"))))
    d.on_update(_key_msg(h, "peer1", str(k)))
    d.on_update(RouteUpdate(str(c), RouteType.REMOTE_WORKLOAD, "peer1"))
    h.manager.apply()
    assert h.allowed(k) == {c}
    d.on_update(RouteUpdate(str(c), RouteType.REMOTE_HOST, "peer1"))
    h.manager.apply()
    assert h.allowed(k) == set()
    assert c not in h.routes()


def test_host_metadata_without_address_removes_endpoint(h: Harness, d: ManagerDispatch) -> None:
    """Deliberate difference: a node that loses its address stops being a peer."""
    k, c = key(), h.cidr("10.65.1.0/26")
    d.on_update(_host_msg(h, "peer1", str(h.ip("1.2.3.5"))))
    d.on_update(_key_msg(h, "peer1", str(k)))
    d.on_update(RouteUpdate(str(c), RouteType.REMOTE_WORKLOAD, "peer1"))
    h.manager.apply()
    assert set(h.peers()) == {k}
    d.on_update(_host_msg(h, "peer1", ""))
    h.manager.apply()
    assert h.peers() == {}
    assert h.route_kinds()[c] is RouteKind.THROW


def test_removes(h: Harness, d: ManagerDispatch) -> None:
    k, c = key(), h.cidr("10.65.1.0/26")
    d.on_update(_host_msg(h, "peer1", str(h.ip("1.2.3.5"))))
    d.on_update(_key_msg(h, "peer1", str(k)))
    d.on_update(RouteUpdate(str(c), RouteType.REMOTE_WORKLOAD, "peer1"))
    h.manager.apply()
    remove = (
        WireguardEndpointRemove("peer1")
        if h.family is IPFamily.V4
        else WireguardEndpointV6Remove("peer1")
    )
    d.on_update(remove)
    h.manager.apply()
    assert h.peers() == {}
    d.on_update(RouteRemove(str(c)))
    d.on_update(HostMetadataRemove("peer1"))
    h.manager.apply()
    assert h.routes() == {}
    assert h.manager.nodes == {}


def test_local_host_route_is_a_removal(h: Harness, d: ManagerDispatch) -> None:
    c = h.cidr("10.65.0.0/26")
    d.on_update(RouteUpdate(str(c), RouteType.LOCAL_WORKLOAD, "my-host"))
    h.manager.apply()
    assert h.route_kinds() == {c: RouteKind.THROW}
    d.on_update(RouteUpdate(str(c), RouteType.LOCAL_HOST, "my-host"))
    h.manager.apply()
    assert h.routes() == {}


def test_dual_stack_dispatch_all() -> None:
    from meshcrypt.fakes import FakeKernel

    kernel = FakeKernel(immediate_link_up=True)
    v4, v6 = Harness(IPFamily.V4, kernel), Harness(IPFamily.V6, kernel)
    ds = [ManagerDispatch(v4.manager), ManagerDispatch(v6.manager)]
    k4, k6 = key(), key()
    msgs: list[DataplaneMessage] = [
        HostMetadataUpdate("peer1", str(v4.ip("1.2.3.5")), str(v6.ip("1.2.3.5"))),
        WireguardEndpointUpdate("peer1", str(k4)),
        WireguardEndpointV6Update("peer1", str(k6)),
        RouteUpdate(str(v4.cidr("10.65.1.0/26")), RouteType.REMOTE_WORKLOAD, "peer1"),
        RouteUpdate(str(v6.cidr("10.65.1.0/26")), RouteType.REMOTE_WORKLOAD, "peer1"),
    ]
    for msg in msgs:
        dispatch_all(ds, msg)
    v4.manager.apply()
    v6.manager.apply()
    assert set(v4.peers()) == {k4}
    assert set(v6.peers()) == {k6}
    assert v4.route_kinds() == {v4.cidr("10.65.1.0/26"): RouteKind.DEVICE}
    assert v6.route_kinds() == {v6.cidr("10.65.1.0/26"): RouteKind.DEVICE}
