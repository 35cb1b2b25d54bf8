"""Scenarios §5.5 (not supported), §5.6 (failure recovery), §5.7 (resync) and §5.8 (disabled)."""

from __future__ import annotations

import errno

import pytest

from meshcrypt.fakes import FakeKernel, Op
from meshcrypt.model.dataplane import Endpoint, Peer, RouteKind, Rule
from meshcrypt.model.errors import MeshcryptError, NotSupported, WaitingForLink
from meshcrypt.model.keys import Key
from meshcrypt.model.net import IPFamily
from tests.unit.wireguard.harness import FWMARK, MTU, TABLE, Harness, key

NOT_SUPPORTED = NotSupported("operation not supported", errno.EOPNOTSUPP)


# §5.5 ------------------------------------------------------------------------------------------


def test_link_add_not_supported_then_resync(h: Harness) -> None:  # 53, 54, 55
    h.kernel.wireguard_supported = False
    h.manager.endpoint_update("my-host", h.ip("1.2.3.4"))
    h.manager.apply()  # no error
    assert not h.kernel.has_link(h.iface)
    assert h.manager.not_supported
    h.manager.apply()
    assert not h.kernel.has_link(h.iface)
    assert h.kernel.counters.link_add == 0
    h.kernel.wireguard_supported = True
    h.manager.queue_resync()
    with pytest.raises(WaitingForLink):
        h.manager.apply()
    assert h.kernel.has_link(h.iface)


@pytest.mark.parametrize("what", ["link", "wireguard-client"])
def test_not_supported_publishes_zero_key_once(family: IPFamily, what: str) -> None:  # 56
    h = Harness(family, FakeKernel(immediate_link_up=True))
    if what == "link":
        h.kernel.wireguard_supported = False
    else:
        h.kernel.faults.fail_next(Op.NEW_WIREGUARD_CLIENT, NOT_SUPPORTED)
    h.manager.endpoint_update("my-host", h.ip("1.2.3.4"))
    h.manager.apply()
    assert h.published == [Key.zero()]
    assert h.kernel.counters.netlink_clients == 1
    assert h.kernel.counters.wireguard_clients == (1 if what == "wireguard-client" else 0)
    before = h.kernel.counters
    h.manager.apply()
    assert h.kernel.counters - before == type(before)()
    h.kernel.wireguard_supported = True
    h.manager.queue_resync()
    h.manager.apply()
    assert len(h.published) == 2
    assert not h.published[1].is_zero
    assert h.published[1] == h.device().public_key
    assert h.kernel.counters.netlink_clients == 1
    assert h.kernel.counters.wireguard_clients == (2 if what == "wireguard-client" else 1)


def test_wireguard_client_recovers_after_many_failures(h: Harness) -> None:
    """Deliberate difference (§6.1 back-off bug): repeated failures never stick as "not supported"."""
    h.kernel.immediate_link_up = True
    for _ in range(5):
        h.kernel.faults.fail_next(Op.NEW_WIREGUARD_CLIENT, NOT_SUPPORTED)
        h.manager.queue_resync()
        h.manager.apply()
        assert h.manager.not_supported
    for _ in range(3):
        h.kernel.faults.fail_next(Op.NEW_WIREGUARD_CLIENT)
        with pytest.raises(MeshcryptError):
            h.manager.queue_resync()
            h.manager.apply()
    h.manager.queue_resync()
    h.manager.apply()
    assert not h.manager.not_supported
    assert h.published[-1] == h.device().public_key


def test_netlink_client_failures_never_crash(h: Harness) -> None:
    """Deliberate difference: the reference panics on the 4th netlink client failure."""
    for _ in range(6):
        h.kernel.faults.fail_next(Op.NEW_NETLINK_CLIENT)
        with pytest.raises(MeshcryptError):
            h.manager.apply()
    h.apply_until_not_waiting()
    assert h.device().public_key == h.published[-1]


# §5.6 ------------------------------------------------------------------------------------------

FIRST_FAULTS = [
    Op.NEW_NETLINK_CLIENT,
    Op.LINK_ADD,
    Op.LINK_BY_NAME,
    Op.ADDRESS_LIST,
    Op.ADDRESS_ADD,
    Op.ADDRESS_DELETE,
    Op.LINK_SET_UP,
    Op.LINK_SET_MTU,
    Op.RULE_LIST,
    Op.RULE_ADD,
    Op.NEW_WIREGUARD_CLIENT,
    Op.WG_CONFIGURE,
    Op.WG_DEVICE,
]
WG_OPS = {Op.NEW_WIREGUARD_CLIENT, Op.WG_CONFIGURE, Op.WG_DEVICE}


def _retry(h: Harness, errors: list[Exception], limit: int = 6) -> None:
    for _ in range(limit):
        try:
            h.manager.apply()
        except WaitingForLink:
            if h.kernel.has_link(h.iface) and h.kernel.up_requested(h.iface):
                h.link_up()
        except MeshcryptError as exc:
            errors.append(exc)
        else:
            return
    raise AssertionError(f"apply did not converge; errors: {errors}")


class FaultRun:
    """§5.6 sequence, with one fault armed at the start."""

    def __init__(self, h: Harness, fault: Op) -> None:
        self.h = h
        self.errors: list[Exception] = []
        self.key1, self.key2 = key(), key()
        h.kernel.faults.fail_next(fault)
        if fault is Op.LINK_SET_MTU:
            h.kernel.add_link(h.iface, kind="wireguard", mtu=1500)  # a stale link, wrong MTU
        h.manager.endpoint_wireguard_update("my-host", Key.zero(), h.ip("192.168.0.0"))
        _retry(h, self.errors)
        h.manager.endpoint_wireguard_update("my-host", Key.zero(), h.ip("192.168.10.0"))
        h.peer("peer1", "1.2.3.5", self.key1, "192.168.1.0/24", "192.168.2.0/24")
        h.manager.route_update("my-host", h.cidr("192.180.0.0/30"))
        _retry(h, self.errors)


@pytest.mark.parametrize("fault", FIRST_FAULTS, ids=lambda op: op.name)
def test_single_fault_recovery(h: Harness, fault: Op) -> None:  # 57
    run = FaultRun(h, fault)
    assert h.kernel.faults.fired(fault) == 1
    assert len(run.errors) == 1
    link = h.kernel.link(h.iface)
    assert (link.kind, link.mtu) == ("wireguard", MTU)
    assert h.addresses() == [h.ip("192.168.10.0")]
    assert set(h.peers()) == {run.key1}
    assert h.allowed(run.key1) == {h.cidr("192.168.1.0/24"), h.cidr("192.168.2.0/24")}
    assert set(h.routes()) == {
        h.cidr("192.168.1.0/24"),
        h.cidr("192.168.2.0/24"),
        h.cidr("192.180.0.0/30"),
    }
    assert h.kernel.counters.route_delete == 0
    assert h.our_rules() == [h.expected_rule()]
    counters = h.kernel.counters
    if fault in WG_OPS:
        assert counters.wireguard_clients == 2
    else:
        assert counters.netlink_clients == 2


SECOND_FAULTS = [(Op.WG_CONFIGURE, False), (Op.ROUTE_REPLACE, True), (Op.ROUTE_DELETE, True)]


@pytest.mark.parametrize(
    ("fault", "persistent"), SECOND_FAULTS, ids=[f.name for f, _ in SECOND_FAULTS]
)
def test_second_fault_recovery(h: Harness, fault: Op, persistent: bool) -> None:  # 58
    run = FaultRun(h, Op.ADDRESS_DELETE)
    base = h.kernel.counters
    h.kernel.faults.fail_next(fault, persistent=persistent)
    h.manager.endpoint_wireguard_remove("peer1")
    h.manager.endpoint_remove("peer1")
    h.manager.route_remove(h.cidr("192.168.1.0/24"))
    h.manager.route_remove(h.cidr("192.168.2.0/24"))
    h.peer("peer2", "1.2.3.6", run.key2, "192.168.1.0/24", "192.168.3.0/24")
    with pytest.raises(MeshcryptError):
        h.manager.apply()
    h.kernel.faults.clear(fault)
    h.manager.apply()
    assert set(h.peers()) == {run.key2}
    assert h.allowed(run.key2) == {h.cidr("192.168.1.0/24"), h.cidr("192.168.3.0/24")}
    assert h.route_kinds() == {
        h.cidr("192.168.1.0/24"): RouteKind.DEVICE,
        h.cidr("192.168.3.0/24"): RouteKind.DEVICE,
        h.cidr("192.180.0.0/30"): RouteKind.THROW,
    }
    diff = h.kernel.counters - base
    assert (diff.route_add, diff.route_delete) == (1, 1)
    if fault is Op.WG_CONFIGURE:
        assert diff.wireguard_clients == 1
        assert diff.netlink_clients == 0
    else:
        assert diff.netlink_clients == 1
        assert diff.wireguard_clients == 0


# §5.7 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device_port", [1000, 1001])
def test_resync_reconciles_device(device_port: int) -> None:  # 59 (IPv4)
    kernel = FakeKernel()
    h = Harness(IPFamily.V4, kernel)
    kernel.add_link(h.iface, kind="wireguard", mtu=MTU, up=True)
    k1, k2, k3, k4 = key(), key(), key(), key()
    h.manager.route_update("my-host", h.cidr("1.2.3.0/32"))
    for name, ip, peer_key, c in [
        ("peer1", "1.2.3.5", k1, "192.168.1.0/24"),
        ("peer2", "1.2.3.6", k2, "192.168.2.0/24"),
        ("peer3", "10.10.20.20", k3, "192.168.3.0/24"),
        ("peer4", "10.10.20.30", k3, "192.168.4.0/26"),
    ]:
        h.peer(name, ip, peer_key, c)
    cidr = h.cidr
    kernel.tamper_device(
        h.iface,
        peers=[
            Peer(k1, endpoint=Endpoint(h.ip("1.2.3.5"), device_port)),
            Peer(k2, allowed_ips=frozenset({cidr("192.168.2.0/24"), cidr("192.168.3.0/24")})),
            Peer(k3),
            Peer(k4, allowed_ips=frozenset({cidr("192.168.4.0/26")})),
        ],
    )
    h.manager.apply()
    peers = h.peers()
    assert set(peers) == {k1, k2}
    assert peers[k1].endpoint == h.endpoint("1.2.3.5")
    assert peers[k1].allowed_ips == {cidr("192.168.1.0/24")}
    assert peers[k2].endpoint == h.endpoint("1.2.3.6")
    assert peers[k2].allowed_ips == {cidr("192.168.2.0/24")}
    resync = next(c for c in h.configure_log if c.peers)
    by_key = {p.public_key: p for p in resync.peers}
    assert not by_key[k1].replace_allowed_ips
    assert (by_key[k1].endpoint is not None) == (device_port != 1000)
    assert by_key[k2].endpoint is not None
    assert by_key[k2].replace_allowed_ips
    assert by_key[k3].remove and by_key[k4].remove


def test_out_of_band_peer_and_route_deletion_repaired_on_resync(h: Harness) -> None:
    h.start()
    k1 = key()
    h.peer("peer1", "1.2.3.5", k1, "192.168.1.0/24")
    h.manager.apply()
    h.kernel.tamper_device(h.iface, peers=[])
    route = h.routes()[h.cidr("192.168.1.0/24")]
    h.kernel.remove_route(route.key)
    h.manager.queue_resync()
    h.manager.apply()
    assert h.allowed(k1) == {h.cidr("192.168.1.0/24")}
    assert h.routes()[h.cidr("192.168.1.0/24")] == route


def test_resync_removes_foreign_routes_in_our_table_only(h: Harness) -> None:
    from meshcrypt.model.dataplane import Route

    h.start()
    foreign_throw = Route(
        TABLE, h.cidr("10.77.0.0/16"), RouteKind.THROW, None, 3, h.family.default_route_metric
    )
    other_table = Route(
        TABLE + 1, h.cidr("10.78.0.0/16"), RouteKind.THROW, None, 3, h.family.default_route_metric
    )
    h.kernel.put_route(foreign_throw)
    h.kernel.put_route(other_table)
    h.manager.queue_resync()
    h.manager.apply()
    assert foreign_throw.dst not in h.routes()
    assert h.kernel.route(other_table.key) == other_table


def test_link_deleted_is_recreated_without_waiting_for_resync(h: Harness) -> None:
    h.kernel.immediate_link_up = True
    h.manager.apply()
    k1 = key()
    h.peer("peer1", "1.2.3.5", k1, "192.168.1.0/24")
    h.manager.apply()
    index = h.kernel.link(h.iface).index
    h.kernel.delete_link(h.iface)
    h.manager.on_iface_state_changed(h.iface, index, up=False, present=False)
    h.manager.apply()
    assert h.allowed(k1) == {h.cidr("192.168.1.0/24")}
    assert h.route_kinds()[h.cidr("192.168.1.0/24")] is RouteKind.DEVICE
    # A new device means a new key, published again.
    assert h.published[-1] == h.device().public_key
    assert len(h.published) == 2


# §5.8 ------------------------------------------------------------------------------------------


def test_disabled_without_link_does_nothing(family: IPFamily) -> None:  # 60
    h = Harness(family, enabled=False)
    h.manager.apply()
    h.manager.apply()
    assert (h.kernel.counters.link_add, h.kernel.counters.link_delete) == (0, 0)
    assert h.published == [Key.zero()]


def test_disabled_deletes_stale_link(family: IPFamily) -> None:  # 61
    h = Harness(family, enabled=False)
    h.kernel.add_link(h.iface, kind="wireguard", up=True)
    h.manager.apply()
    assert (h.kernel.counters.link_add, h.kernel.counters.link_delete) == (0, 1)
    assert not h.kernel.has_link(h.iface)


def test_disabled_ignores_updates_and_removes(family: IPFamily) -> None:  # 62, 63
    h = Harness(family, enabled=False)
    h.manager.apply()
    h.peer("peer1", "1.2.3.5", key(), "192.168.1.0/24")
    h.manager.endpoint_wireguard_update("my-host", key(), h.ip("1.2.3.4"))
    h.manager.apply()
    h.manager.endpoint_remove("peer1")
    h.manager.endpoint_wireguard_remove("peer1")
    h.manager.route_remove(h.cidr("192.168.1.0/24"))
    h.manager.apply()
    assert (h.kernel.counters.link_add, h.kernel.counters.link_delete) == (0, 0)
    assert h.kernel.counters.wg_configure == 0
    assert h.manager.nodes == {}


DISABLED_FAULTS = [
    (Op.NEW_NETLINK_CLIENT, False),
    (Op.LINK_DELETE, False),
    (Op.LINK_BY_NAME, False),
    (Op.RULE_LIST, False),
    (Op.RULE_DELETE, False),
    (Op.ROUTE_LIST, True),
]


@pytest.mark.parametrize(
    ("fault", "persistent"), DISABLED_FAULTS, ids=[f.name for f, _ in DISABLED_FAULTS]
)
def test_disabled_cleanup_recovers_from_fault(
    family: IPFamily, fault: Op, persistent: bool
) -> None:  # 64
    h = Harness(family, enabled=False)
    h.kernel.add_link(h.iface, kind="wireguard", up=True)
    stale = Rule(family, 99, TABLE, FWMARK, FWMARK, invert=True)
    h.kernel.insert_rule(stale)
    stale_route = h.cidr("192.168.9.0/24")
    from meshcrypt.model.dataplane import Route

    h.kernel.put_route(
        Route(TABLE, stale_route, RouteKind.THROW, None, 3, family.default_route_metric)
    )
    h.kernel.faults.fail_next(fault, persistent=persistent)
    with pytest.raises(MeshcryptError):
        h.manager.apply()
    h.kernel.faults.clear(fault)
    h.manager.apply()
    assert not h.kernel.has_link(h.iface)
    assert h.kernel.counters.netlink_clients > 1
    assert h.kernel.counters.rule_delete > 0
    assert h.kernel.counters.rule_add == 0
    assert [r.table for r in h.kernel.rules_of(family)] == (
        [255, 254, 253] if family is IPFamily.V4 else [255, 254]
    )
    assert h.routes() == {}
    assert h.published == [Key.zero()]


def test_disabled_family_leaves_other_family_alone() -> None:
    """Both families share table 99; tidying the disabled one must not touch the enabled one."""
    kernel = FakeKernel(immediate_link_up=True)
    v4 = Harness(IPFamily.V4, kernel)
    v6 = Harness(IPFamily.V6, kernel, enabled=False)
    v4.manager.route_update("my-host", v4.cidr("192.180.0.0/30"))
    v4.manager.apply()
    v6.manager.apply()
    v6.manager.queue_resync()
    v6.manager.apply()
    assert v4.route_kinds() == {v4.cidr("192.180.0.0/30"): RouteKind.THROW}
    assert v4.our_rules() == [v4.expected_rule()]
    assert kernel.has_link(v4.iface)
