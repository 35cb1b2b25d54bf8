"""RouteTable on the fake kernel: deltas touch only the changed CIDRs, full resyncs repair."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from meshcrypt.fakes import FakeKernel
from meshcrypt.fakes.faults import Op
from meshcrypt.model.dataplane import Route, RouteKind
from meshcrypt.model.errors import UpdateFailed
from meshcrypt.model.net import CIDR, IPFamily
from meshcrypt.ports import CachedClient, Netlink
from meshcrypt.routing.route_table import RouteTable

TABLE = 7
IFACE = "wg-test"
PROTOCOL = 3


def net(i: int) -> CIDR:
    return ipaddress.IPv4Network((0x0A400000 + 64 * i, 26))


class Rig:
    def __init__(self, routes: int = 0) -> None:
        self.kernel = FakeKernel(immediate_link_up=True)
        self.link = self.kernel.add_link(IFACE, kind="wireguard", up=True)
        self.table = RouteTable(
            IPFamily.V4,
            TABLE,
            IFACE,
            PROTOCOL,
            CachedClient[Netlink](self.kernel.netlink_factory()),
        )
        self.table.on_iface_state(IFACE, self.link.index, True)
        for i in range(routes):
            self.table.set_route(net(i), RouteKind.DEVICE)
        self.table.apply()

    def kinds(self) -> dict[CIDR, RouteKind]:
        return {r.dst: r.kind for r in self.kernel.routes_in(TABLE, IPFamily.V4)}

    def count_desired(self, monkeypatch: pytest.MonkeyPatch) -> list[CIDR]:
        """Record every CIDR whose desired route the table builds from now on."""
        built: list[CIDR] = []
        original: Callable[[CIDR], Route | None] = self.table._desired_route

        def counting(dst: CIDR) -> Route | None:
            built.append(dst)
            return original(dst)

        monkeypatch.setattr(self.table, "_desired_route", counting)
        return built


def test_first_apply_programs_everything() -> None:
    rig = Rig(routes=50)
    assert rig.kinds() == {net(i): RouteKind.DEVICE for i in range(50)}
    assert rig.table.in_sync


def test_delta_builds_only_the_changed_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(routes=2000)
    built = rig.count_desired(monkeypatch)
    before = rig.kernel.counters
    rig.table.set_route(net(5), RouteKind.THROW)
    rig.table.remove_route(net(6))
    rig.table.set_route(net(4000), RouteKind.DEVICE)
    plan = rig.table.apply()
    assert sorted(built) == [net(5), net(6), net(4000)]
    assert [r.dst for r in plan.delete] == [net(6)]
    assert {r.dst for r in plan.replace} == {net(5), net(4000)}
    diff = rig.kernel.counters - before
    assert (diff.route_add, diff.route_update, diff.route_delete) == (1, 1, 1)
    kinds = rig.kinds()
    assert kinds[net(5)] is RouteKind.THROW
    assert net(6) not in kinds
    assert kinds[net(4000)] is RouteKind.DEVICE
    assert len(kinds) == 2000


def test_delta_records_what_it_programmed() -> None:
    rig = Rig(routes=10)
    rig.table.remove_route(net(3))
    rig.table.apply()
    before = rig.kernel.counters
    rig.table.set_route(net(3), RouteKind.DEVICE)  # back, after being deleted
    rig.table.set_route(net(4), RouteKind.THROW)
    rig.table.apply()
    rig.table.set_route(net(4), RouteKind.DEVICE)
    rig.table.apply()
    diff = rig.kernel.counters - before
    assert (diff.route_add, diff.route_update, diff.route_delete) == (1, 2, 0)
    assert rig.kinds() == {net(i): RouteKind.DEVICE for i in range(10)}
    assert rig.table.apply().is_empty  # nothing dirty: nothing planned


def test_a_change_undone_before_the_apply_costs_nothing() -> None:
    rig = Rig(routes=10)
    before = rig.kernel.counters
    rig.table.set_route(net(2), RouteKind.THROW)
    rig.table.set_route(net(2), RouteKind.DEVICE)
    rig.table.set_route(net(20), RouteKind.DEVICE)
    rig.table.remove_route(net(20))
    assert rig.table.apply().is_empty
    assert (rig.kernel.counters - before).nonzero() == {}


def test_delta_leaves_out_of_band_changes_to_the_full_resync() -> None:
    rig = Rig(routes=10)
    lost = next(r for r in rig.kernel.routes_in(TABLE, IPFamily.V4) if r.dst == net(1))
    rig.kernel.remove_route(lost.key)
    rig.table.set_route(net(2), RouteKind.THROW)
    rig.table.apply()
    assert net(1) not in rig.kinds()
    rig.table.queue_resync()
    plan = rig.table.apply()
    assert [r.dst for r in plan.replace] == [net(1)]
    assert rig.kinds()[net(1)] is RouteKind.DEVICE
    assert rig.kinds()[net(2)] is RouteKind.THROW


def test_failed_delta_turns_into_a_full_resync() -> None:
    rig = Rig(routes=10)
    rig.kernel.faults.fail_next(Op.ROUTE_REPLACE)
    rig.table.set_route(net(3), RouteKind.THROW)
    with pytest.raises(UpdateFailed):
        rig.table.apply()
    assert not rig.table.in_sync
    rig.table.apply()
    assert rig.kinds()[net(3)] is RouteKind.THROW
    assert len(rig.kinds()) == 10


def test_device_routes_wait_for_the_interface_and_come_back_after_a_flap() -> None:
    rig = Rig(routes=3)
    rig.table.set_route(net(9), RouteKind.THROW)
    rig.table.apply()
    rig.kernel.set_link_up(IFACE, False)  # the kernel drops the device routes
    rig.table.on_iface_state(IFACE, rig.link.index, False)
    rig.table.apply()
    assert rig.kinds() == {net(9): RouteKind.THROW}
    rig.kernel.set_link_up(IFACE)
    rig.table.on_iface_state(IFACE, rig.link.index, True)
    rig.table.apply()
    assert rig.kinds() == {**{net(i): RouteKind.DEVICE for i in range(3)}, net(9): RouteKind.THROW}
