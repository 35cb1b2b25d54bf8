"""Link events the manager caused itself (creating the device, setting it up) arrive after the apply
that caused them: they must not make the next apply program everything again. Events of a real
change of the link still do."""

from __future__ import annotations

from meshcrypt.fakes import FakeKernel
from meshcrypt.model.dataplane import Device, RouteKind
from meshcrypt.model.net import IPFamily
from tests.unit.wireguard.harness import MTU, Harness, key

PEERS = 20


def started(family: IPFamily, *, adopt: bool = False) -> Harness:
    """A manager whose first apply created (or adopted) the device and programmed PEERS peers."""
    h = Harness(family, FakeKernel(immediate_link_up=True))
    if adopt:
        h.kernel.add_link(h.iface, kind="wireguard", mtu=MTU, up=True)
    for i in range(PEERS):
        h.peer(f"peer{i}", f"1.2.3.{10 + i}", key(), f"10.{i}.0.0/24")
    h.manager.apply()
    assert len(h.peers()) == PEERS
    assert len(h.routes()) == PEERS
    return h


def creation_echo(h: Harness) -> None:
    """What the link monitor reports for a device created and set up: down, down, down, up."""
    index = h.kernel.link(h.iface).index
    for up in (False, False, False, True):
        h.manager.on_iface_state_changed(h.iface, index, up)


def device_reads(h: Harness) -> list[int]:
    reads: list[int] = []
    wg = h.manager._wg.get()
    original = wg.device

    def counting(name: str) -> Device:
        reads.append(1)
        return original(name)

    wg.device = counting  # type: ignore[method-assign]
    return reads


def test_the_echo_of_our_own_device_creation_changes_nothing(family: IPFamily) -> None:
    h = started(family)
    assert h.kernel.counters.link_add == 1
    before, configures, reads = h.kernel.counters, len(h.configure_log), device_reads(h)
    creation_echo(h)
    assert not h.manager.out_of_sync
    h.manager.apply()
    assert (h.kernel.counters - before).nonzero() == {}
    assert len(h.configure_log) == configures
    assert reads == []  # no WireGuard resync: the device is not read back


def test_a_real_flap_after_the_echo_is_repaired(family: IPFamily) -> None:
    h = started(family)
    creation_echo(h)
    h.manager.apply()
    index = h.kernel.link(h.iface).index
    h.kernel.set_link_up(h.iface, False)  # someone sets it down: the kernel drops device routes
    h.manager.on_iface_state_changed(h.iface, index, False)
    h.manager.apply()  # brings it up again
    h.manager.on_iface_state_changed(h.iface, index, True)
    h.manager.apply()
    assert h.kernel.link(h.iface).admin_up
    assert len(h.routes()) == PEERS
    assert set(h.route_kinds().values()) == {RouteKind.DEVICE}


def test_a_flap_right_behind_the_echo_in_one_batch_is_repaired(family: IPFamily) -> None:
    h = started(family)
    index = h.kernel.link(h.iface).index
    h.kernel.set_link_up(h.iface, False)
    h.kernel.set_link_up(h.iface, True)  # routes gone, link up again
    creation_echo(h)
    h.manager.on_iface_state_changed(h.iface, index, False)
    h.manager.on_iface_state_changed(h.iface, index, True)
    h.manager.apply()
    assert len(h.routes()) == PEERS
    assert set(h.route_kinds().values()) == {RouteKind.DEVICE}


def test_an_adopted_device_has_no_echo(family: IPFamily) -> None:
    h = started(family, adopt=True)
    assert h.kernel.counters.link_add == 0
    index = h.kernel.link(h.iface).index
    h.kernel.set_link_up(h.iface, False)
    h.manager.on_iface_state_changed(h.iface, index, False)
    h.manager.apply()
    h.manager.on_iface_state_changed(h.iface, index, True)
    h.manager.apply()
    assert h.kernel.link(h.iface).admin_up
    assert len(h.routes()) == PEERS


def test_a_deleted_device_ends_the_echo(family: IPFamily) -> None:
    h = started(family)
    index = h.kernel.link(h.iface).index
    h.manager.on_iface_state_changed(h.iface, index, False)  # part of the echo
    h.kernel.delete_link(h.iface)
    h.manager.on_iface_state_changed(h.iface, index, False, present=False)
    h.manager.apply()
    assert h.kernel.link(h.iface).index != index
    assert len(h.peers()) == PEERS
    assert len(h.routes()) == PEERS


def test_known_up_state_changes_nothing(family: IPFamily) -> None:
    h = started(family, adopt=True)
    before, configures = h.kernel.counters, len(h.configure_log)
    index = h.kernel.link(h.iface).index
    h.manager.on_iface_state_changed(h.iface, index, True)
    h.manager.apply()
    assert (h.kernel.counters - before).nonzero() == {}
    assert len(h.configure_log) == configures


def test_a_resync_ends_the_echo(family: IPFamily) -> None:
    h = started(family)
    index = h.kernel.link(h.iface).index
    h.manager.queue_resync()
    h.manager.apply()
    h.kernel.set_link_up(h.iface, False)
    h.manager.on_iface_state_changed(h.iface, index, False)  # taken as it comes
    h.manager.apply()
    assert h.kernel.link(h.iface).admin_up
    assert len(h.routes()) == PEERS
