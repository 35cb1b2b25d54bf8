"""Dataplane: per-family managers rebuilt on a configuration change, with the calculator's snapshot
replayed and what the old configuration left behind tidied; errors of one family do not hold up the
other. With host encryption: host addresses held back until our key is published, and the nftables
incoming mark kept in step with the configuration."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Iterable

import pytest

from meshcrypt.agent.dataplane import Dataplane
from meshcrypt.calc.calculator import Calculator
from meshcrypt.fakes import FakeKernel, Op
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.dataplane import Endpoint, RouteKind, Rule
from meshcrypt.model.errors import KernelError, NotSupported, UpdateFailed
from meshcrypt.model.keys import Key
from meshcrypt.model.messages import RouteType, RouteUpdate
from meshcrypt.model.net import IPFamily
from meshcrypt.model.resources import IPAMBlockResource, NodeResource
from meshcrypt.wireguard.manager import napi_path
from tests.unit.agent.helpers import fake_backend, new_key

V4, V6 = IPFamily.V4, IPFamily.V6
ME = "n1"
IFACE = "wireguard.cali"
IFACE_V6 = "wg-v6.cali"
MARK = 0x100000
ENABLED = FelixConfig(wireguard_enabled=True)
BOTH = FelixConfig(wireguard_enabled=True, wireguard_enabled_v6=True)
HOST_ENCRYPTION = FelixConfig(
    wireguard_enabled=True, wireguard_enabled_v6=True, wireguard_host_encryption_enabled=True
)


class RecordingMark:
    """An `IncomingMark` that records what it was asked for (and can refuse)."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], int]] = []
        self.error: Exception | None = None

    def ensure(self, ports: Iterable[int], mark: int) -> bool:
        self.calls.append((tuple(ports), mark))
        if self.error is not None:
            raise self.error
        return True


def own_node(key: Key | None = None, key_v6: Key | None = None) -> NodeResource:
    return NodeResource(
        ME,
        ipv4_address=ipaddress.IPv4Interface("192.168.0.1/24"),
        ipv6_address=ipaddress.IPv6Interface("fd00:99::1/64"),
        public_key=key,
        public_key_v6=key_v6,
    )


class Rig:
    """A Dataplane on a fake kernel, fed by a real calculator as the agent feeds it."""

    def __init__(self) -> None:
        self.kernel = FakeKernel(immediate_link_up=True)
        self.keys: list[tuple[IPFamily, Key]] = []
        self.mark = RecordingMark()
        self.dataplane = Dataplane(
            ME,
            fake_backend(self.kernel),
            self.kernel.sysfs,
            lambda f, k: self.keys.append((f, k)),
            incoming_mark=self.mark,
        )
        self.calc = Calculator(ME)
        self.key_b, self.key_b6 = new_key(), new_key()
        self.calc.on_node(ME, own_node())
        self.calc.on_node(
            "b",
            NodeResource(
                "b",
                ipv4_address=ipaddress.IPv4Interface("192.168.0.2/24"),
                ipv6_address=ipaddress.IPv6Interface("fd00:99::2/64"),
                public_key=self.key_b,
                public_key_v6=self.key_b6,
            ),
        )
        for cidr, node in (
            ("10.65.0.0/26", ME),
            ("10.65.1.0/26", "b"),
            ("fd00:65::/122", ME),
            ("fd00:65:1::/122", "b"),
        ):
            self.calc.on_block(cidr, IPAMBlockResource(ipaddress.ip_network(cidr), node))

    def configure(self, config: FelixConfig) -> list[IPFamily]:
        """What the agent does on a configuration change (`Agent._dataplane_round`)."""
        first = not self.dataplane.managers
        rebuilt = self.dataplane.configure(config)
        messages = self.calc.flush()
        if first:
            self.dataplane.dispatch(messages)
        else:
            self.dataplane.dispatch_to([f for f in IPFamily if f not in rebuilt], messages)
            self.dataplane.dispatch_to(rebuilt, self.calc.snapshot())
        return rebuilt

    def apply(self) -> None:
        self.dataplane.apply()

    def routes(self, table: int, family: IPFamily = V4) -> dict[str, tuple[RouteKind, int | None]]:
        return {str(r.dst): (r.kind, r.ifindex) for r in self.kernel.routes_in(table, family)}

    def our_rules(self, family: IPFamily = V4) -> list[Rule]:
        return [r for r in self.kernel.rules_of(family) if r.priority == 99]

    def last_key(self, family: IPFamily) -> Key:
        return [k for f, k in self.keys if f is family][-1]

    def publish(self, **keys: Key | None) -> None:
        """Our Node as the datastore shows it, with these keys (as the agent's syncer sees it)."""
        self.calc.on_node(ME, own_node(keys.get("v4"), keys.get("v6")))
        self.dataplane.dispatch(self.calc.flush())


def started(config: FelixConfig = ENABLED) -> Rig:
    rig = Rig()
    assert rig.configure(config) == [V4, V6]
    rig.apply()
    return rig


def test_first_configuration_programs_both_families() -> None:
    rig = started(BOTH)
    for family, iface, block, endpoint, key in (
        (V4, IFACE, "10.65.1.0/26", "192.168.0.2", rig.key_b),
        (V6, IFACE_V6, "fd00:65:1::/122", "fd00:99::2", rig.key_b6),
    ):
        device = rig.kernel.device(iface)
        assert rig.last_key(family) == device.public_key
        peer = device.peers[key]
        assert peer.endpoint == Endpoint(ipaddress.ip_address(endpoint), device.listen_port)
        assert ipaddress.ip_network(block) in peer.allowed_ips
        index = rig.kernel.link(iface).index
        assert rig.routes(1, family)[block] == (RouteKind.DEVICE, index)
        assert rig.our_rules(family) == [Rule(family, 99, 1, MARK, MARK, invert=True)]
    assert (rig.kernel.device(IFACE).listen_port, rig.kernel.device(IFACE_V6).listen_port) == (
        51820,
        51821,
    )


def test_unchanged_configuration_rebuilds_nothing() -> None:
    rig = started()
    managers = dict(rig.dataplane.managers)
    assert rig.configure(ENABLED) == []
    assert rig.dataplane.managers == managers


def test_port_change_keeps_the_device_and_its_key() -> None:
    rig = started()
    before = rig.kernel.device(IFACE)
    link = rig.kernel.link(IFACE)
    counters = rig.kernel.counters
    assert rig.configure(dataclasses.replace(ENABLED, wireguard_listening_port=51999)) == [V4]
    rig.apply()
    after = rig.kernel.device(IFACE)
    assert after.listen_port == 51999
    assert after.private_key == before.private_key
    assert after.public_key == before.public_key == rig.last_key(V4)
    assert rig.kernel.link(IFACE).index == link.index
    assert (rig.kernel.counters - counters).link_add == 0
    assert (rig.kernel.counters - counters).link_delete == 0
    assert set(after.peers) == {rig.key_b}
    assert rig.routes(1)["10.65.1.0/26"] == (RouteKind.DEVICE, link.index)


def test_interface_rename_replaces_the_device() -> None:
    rig = started()
    old_key = rig.kernel.device(IFACE).public_key
    assert rig.configure(dataclasses.replace(ENABLED, wireguard_interface_name="wg-new")) == [V4]
    rig.apply()
    assert not rig.kernel.has_link(IFACE)
    device = rig.kernel.device("wg-new")
    assert device.public_key is not None and device.public_key != old_key
    assert rig.last_key(V4) == device.public_key
    assert set(device.peers) == {rig.key_b}
    index = rig.kernel.link("wg-new").index
    assert rig.routes(1) == {
        "10.65.0.0/26": (RouteKind.THROW, None),
        "10.65.1.0/26": (RouteKind.DEVICE, index),
    }
    assert len(rig.our_rules()) == 1
    # The tidy-up is done once: later applies do not look for the old device again.
    counters = rig.kernel.counters
    rig.apply()
    assert (rig.kernel.counters - counters).link_delete == 0


def test_table_change_moves_routes_and_rule() -> None:
    rig = started()
    index = rig.kernel.link(IFACE).index
    assert rig.routes(1)["10.65.1.0/26"] == (RouteKind.DEVICE, index)
    assert rig.routes(1)["10.65.0.0/26"] == (RouteKind.THROW, None)
    key = rig.kernel.device(IFACE).public_key
    # Someone else's route in the old table (through another device) is left alone.
    eth = rig.kernel.add_link("eth0", up=True)
    foreign = dataclasses.replace(
        rig.kernel.routes_in(1, V4)[0],
        dst=ipaddress.ip_network("172.16.0.0/16"),
        kind=RouteKind.DEVICE,
        ifindex=eth.index,
    )
    rig.kernel.put_route(foreign)

    assert rig.configure(dataclasses.replace(ENABLED, route_table_ranges=((10, 20),))) == [V4, V6]
    rig.apply()
    assert rig.routes(1) == {"172.16.0.0/16": (RouteKind.DEVICE, eth.index)}
    assert rig.routes(10) == {
        "10.65.0.0/26": (RouteKind.THROW, None),
        "10.65.1.0/26": (RouteKind.DEVICE, index),
    }
    assert rig.our_rules() == [Rule(V4, 99, 10, MARK, MARK, invert=True)]
    assert rig.kernel.device(IFACE).public_key == key


def test_rename_and_table_change_at_once() -> None:
    rig = started()
    config = dataclasses.replace(
        ENABLED, wireguard_interface_name="wg-new", route_table_ranges=((10, 20),)
    )
    assert rig.configure(config) == [V4, V6]
    rig.apply()
    assert not rig.kernel.has_link(IFACE)
    assert rig.routes(1) == {}
    index = rig.kernel.link("wg-new").index
    assert rig.routes(10) == {
        "10.65.0.0/26": (RouteKind.THROW, None),
        "10.65.1.0/26": (RouteKind.DEVICE, index),
    }
    assert rig.our_rules() == [Rule(V4, 99, 10, MARK, MARK, invert=True)]


def test_disable_removes_everything_and_reports_no_key() -> None:
    rig = started(BOTH)
    assert rig.configure(dataclasses.replace(BOTH, wireguard_enabled=False)) == [V4]
    rig.apply()
    assert not rig.kernel.has_link(IFACE)
    assert rig.routes(1) == {}
    assert rig.our_rules() == []
    assert rig.last_key(V4).is_zero
    # IPv6 is untouched.
    assert rig.kernel.has_link(IFACE_V6)
    assert rig.routes(1, V6)
    assert not rig.last_key(V6).is_zero
    assert len(rig.our_rules(V6)) == 1


def test_enabled_from_the_start_but_disabled_family_reports_no_key() -> None:
    rig = started(ENABLED)
    assert not rig.kernel.has_link(IFACE_V6)
    assert rig.last_key(V6).is_zero
    assert not rig.last_key(V4).is_zero


def test_an_error_in_one_family_does_not_stop_the_other() -> None:
    rig = Rig()
    rig.configure(BOTH)
    # The first link creation (IPv4's: managers apply in family order) fails.
    rig.kernel.faults.fail_next(Op.LINK_ADD)
    with pytest.raises(UpdateFailed, match=r"IPv4 wireguard\.cali"):
        rig.apply()
    assert not rig.kernel.has_link(IFACE)
    device6 = rig.kernel.device(IFACE_V6)
    assert set(device6.peers) == {rig.key_b6}
    assert rig.routes(1, V6)["fd00:65:1::/122"][0] is RouteKind.DEVICE
    assert [f for f, _ in rig.keys] == [V6]
    # The retry completes IPv4.
    rig.apply()
    assert set(rig.kernel.device(IFACE).peers) == {rig.key_b}
    assert rig.routes(1)["10.65.1.0/26"][0] is RouteKind.DEVICE


def test_a_failing_tidy_up_is_retried_and_does_not_stop_the_managers() -> None:
    rig = started()
    rig.configure(dataclasses.replace(ENABLED, wireguard_interface_name="wg-new"))
    rig.kernel.faults.fail_next(Op.LINK_DELETE)
    with pytest.raises(KernelError):
        rig.apply()
    assert rig.kernel.has_link(IFACE)  # the old device is still there
    assert set(rig.kernel.device("wg-new").peers) == {rig.key_b}
    rig.apply()
    assert not rig.kernel.has_link(IFACE)


def test_a_second_concurrent_apply_is_refused() -> None:
    rig = started()
    assert rig.dataplane._lock.acquire(blocking=False)
    try:
        with pytest.raises(RuntimeError, match="another apply"):
            rig.apply()
    finally:
        rig.dataplane._lock.release()


# ---- host encryption -------------------------------------------------------------------------------

B_HOST = {V4: "192.168.0.2/32", V6: "fd00:99::2/128"}
B_BLOCK = {V4: "10.65.1.0/26", V6: "fd00:65:1::/122"}
B_KEY = {V4: "key_b", V6: "key_b6"}


@pytest.mark.parametrize("family", [V4, V6])
def test_host_routes_wait_until_our_key_is_published(family: IPFamily) -> None:
    """A fresh device's key is unknown to the other nodes: host addresses (our own datastore
    traffic among them) are routed directly until the datastore shows the key; workload CIDRs
    are not held, and the peer already accepts the host address (allowed IPs)."""
    rig = started(HOST_ENCRYPTION)
    iface = IFACE if family is V4 else IFACE_V6
    index = rig.kernel.link(iface).index
    peer = rig.kernel.device(iface).peers[getattr(rig, B_KEY[family])]
    assert ipaddress.ip_network(B_HOST[family]) in peer.allowed_ips
    assert rig.routes(1, family)[B_HOST[family]] == (RouteKind.THROW, None)
    assert rig.routes(1, family)[B_BLOCK[family]] == (RouteKind.DEVICE, index)
    assert not rig.dataplane.managers[family].host_routes_open

    rig.publish(v4=rig.last_key(V4), v6=rig.last_key(V6))
    rig.apply()
    assert rig.routes(1, family)[B_HOST[family]] == (RouteKind.DEVICE, index)
    assert rig.dataplane.managers[family].host_routes_open

    # The device is lost (a new one, a new key): held again until that key is published.
    old_key = rig.last_key(family)
    rig.kernel.delete_link(iface)
    rig.dataplane.on_link_event(iface, index, False, False)
    rig.apply()
    new_index = rig.kernel.link(iface).index
    assert rig.last_key(family) == rig.kernel.device(iface).public_key != old_key
    assert rig.routes(1, family)[B_HOST[family]] == (RouteKind.THROW, None)
    assert rig.routes(1, family)[B_BLOCK[family]] == (RouteKind.DEVICE, new_index)
    rig.publish(**{"v4" if family is V4 else "v6": rig.last_key(family)})
    rig.apply()
    assert rig.routes(1, family)[B_HOST[family]] == (RouteKind.DEVICE, new_index)


def test_an_adopted_device_with_its_published_key_never_throws_host_routes() -> None:
    """A restarted agent (same device, key already published) programs host routes through the
    device in its first apply: nothing is routed around WireGuard, even for a moment."""
    rig = started(HOST_ENCRYPTION)
    rig.publish(v4=rig.last_key(V4), v6=rig.last_key(V6))
    rig.apply()
    restarted = Rig()
    restarted.kernel = rig.kernel
    restarted.dataplane = Dataplane(
        ME, fake_backend(rig.kernel), rig.kernel.sysfs, lambda f, k: restarted.keys.append((f, k))
    )
    restarted.publish(v4=rig.last_key(V4), v6=rig.last_key(V6))
    restarted.dataplane.configure(HOST_ENCRYPTION)
    restarted.dataplane.dispatch(restarted.calc.snapshot())
    counters = rig.kernel.counters
    restarted.apply()
    changed = rig.kernel.counters - counters
    assert (changed.route_add, changed.route_update, changed.route_delete) == (0, 0, 0)
    index = rig.kernel.link(IFACE).index
    assert rig.routes(1)[B_HOST[V4]] == (RouteKind.DEVICE, index)


def test_without_host_encryption_host_addresses_are_no_peer_cidrs() -> None:
    rig = started(BOTH)
    assert B_HOST[V4] not in rig.routes(1)
    peer = rig.kernel.device(IFACE).peers[rig.key_b]
    assert ipaddress.ip_network(B_HOST[V4]) not in peer.allowed_ips
    assert rig.dataplane.managers[V4].host_routes_open


def test_incoming_mark_follows_the_configuration_and_every_resync() -> None:
    rig = started(BOTH)
    assert rig.mark.calls == [((), MARK)]  # host encryption off: make sure no table is left
    rig.apply()
    assert len(rig.mark.calls) == 1  # not every apply
    rig.configure(HOST_ENCRYPTION)
    rig.apply()
    assert rig.mark.calls[-1:] == [((51820, 51821), MARK)]
    rig.dataplane.queue_resync()
    rig.apply()
    assert rig.mark.calls[-2:] == [((51820, 51821), MARK)] * 2  # resync: checked again
    rig.configure(dataclasses.replace(HOST_ENCRYPTION, wireguard_enabled_v6=False))
    rig.apply()
    assert rig.mark.calls[-1:] == [((51820,), MARK)]
    rig.configure(dataclasses.replace(HOST_ENCRYPTION, wireguard_host_encryption_enabled=False))
    rig.apply()
    assert rig.mark.calls[-1:] == [((), MARK)]  # removed
    calls = len(rig.mark.calls)
    rig.configure(dataclasses.replace(BOTH, wireguard_persistent_keepalive=5))
    rig.apply()
    assert len(rig.mark.calls) == calls  # nothing about the mark changed


def test_incoming_mark_failures(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    rig.configure(HOST_ENCRYPTION)
    rig.mark.error = KernelError("nft: busy")
    with pytest.raises(KernelError):
        rig.apply()
    rig.mark.error = None
    rig.apply()  # retried with the next apply
    assert rig.mark.calls == [((51820, 51821), MARK)] * 2
    rig.mark.error = NotSupported("nft not found")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            rig.dataplane.queue_resync()
            rig.apply()  # not an apply error: reported once, tried again at each resync
    assert len(rig.mark.calls) == 5
    assert [r.getMessage() for r in caplog.records].count(
        "Cannot mark incoming WireGuard packets (nft not found): with host encryption and strict "
        "reverse-path filtering (rp_filter=1) they will be dropped"
    ) == 1


def test_napi_not_supported_is_reported_once_across_rebuilds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """wireguard-go's TUN refuses threaded NAPI: one warning, not one per rebuilt manager."""
    threaded = dataclasses.replace(ENABLED, wireguard_threading_enabled=True)
    rig = Rig()
    rig.kernel.sysfs.refuse(napi_path(IFACE))
    with caplog.at_level(logging.WARNING):
        rig.configure(threaded)
        rig.apply()
        for keepalive in (5, 6, 7):
            rig.configure(dataclasses.replace(threaded, wireguard_persistent_keepalive=keepalive))
            rig.apply()
            rig.dataplane.queue_resync()
            rig.apply()
    refused = [c for c in rig.kernel.sysfs.calls if c[0] == napi_path(IFACE)]
    assert len(refused) == 7  # tried by every manager and at every resync
    warnings = [r for r in caplog.records if "NAPI" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    # A renamed device is another device: it is reported for that one.
    caplog.clear()
    rig.kernel.sysfs.refuse(napi_path("wg-new"))
    with caplog.at_level(logging.WARNING):
        rig.configure(dataclasses.replace(threaded, wireguard_interface_name="wg-new"))
        rig.apply()
    assert len([r for r in caplog.records if "NAPI" in r.getMessage()]) == 1


def test_napi_waits_for_a_peer_on_the_device() -> None:
    """The kernel refuses the NAPI setting before the device has a peer; the local node's own
    CIDRs alone (Felix's condition) are not enough to try."""
    rig = Rig()
    rig.calc.on_node("b", None)
    rig.configure(dataclasses.replace(ENABLED, wireguard_threading_enabled=True))
    rig.apply()
    assert rig.kernel.sysfs.read(napi_path(IFACE)) is None
    assert rig.dataplane.managers[V4].nodes  # the local node's block is known
    rig.calc.on_node(
        "b",
        NodeResource(
            "b", ipv4_address=ipaddress.IPv4Interface("192.168.0.2/24"), public_key=rig.key_b
        ),
    )
    rig.dataplane.dispatch(rig.calc.flush())
    rig.apply()
    assert rig.kernel.sysfs.read(napi_path(IFACE)) == "1"


def test_an_address_that_stops_being_a_host_address_is_no_longer_held() -> None:
    rig = started(HOST_ENCRYPTION)
    index = rig.kernel.link(IFACE).index
    assert rig.routes(1)[B_HOST[V4]] == (RouteKind.THROW, None)
    # The /32 stops being b's host address and becomes one of b's workload addresses.
    rig.dataplane.dispatch([RouteUpdate(B_HOST[V4], RouteType.REMOTE_WORKLOAD, dst_node_name="b")])
    rig.apply()
    assert rig.routes(1)[B_HOST[V4]] == (RouteKind.DEVICE, index)
    rig.dataplane.dispatch([RouteUpdate(B_HOST[V4], RouteType.REMOTE_HOST, dst_node_name="b")])
    rig.apply()
    assert rig.routes(1)[B_HOST[V4]] == (RouteKind.THROW, None)


def test_enabling_a_family_later_gives_it_every_node() -> None:
    """The disabled family's manager ignores what it is fed; enabling the family builds a new
    manager that gets the calculator's whole snapshot."""
    rig = started(ENABLED)  # IPv6 off
    assert not rig.dataplane.managers[V6]._cache.nodes
    assert rig.configure(BOTH) == [V6]
    rig.apply()
    peer = rig.kernel.device(IFACE_V6).peers[rig.key_b6]
    assert ipaddress.ip_network("fd00:65:1::/122") in peer.allowed_ips
    assert rig.routes(1, V6)["fd00:65:1::/122"][0] is RouteKind.DEVICE
