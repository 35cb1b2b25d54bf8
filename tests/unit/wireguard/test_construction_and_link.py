"""Scenarios §5.1 (construction) and §5.2 (link creation and readiness), for IPv4 and IPv6."""

from __future__ import annotations

import pytest

from meshcrypt.fakes import FakeKernel
from meshcrypt.model.dataplane import InterfaceAddress, Rule
from meshcrypt.model.errors import ConfigError, WaitingForLink
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import IPFamily
from tests.unit.wireguard.harness import FWMARK, MTU, PORTS, TABLE, Harness

# §5.1 ------------------------------------------------------------------------------------------


def test_constructed_enabled(h: Harness) -> None:  # 1
    assert h.manager.enabled
    assert h.manager.route_table is not None
    assert h.manager.rules is not None


@pytest.mark.parametrize("table", [0, 253, 254, 255, 0xFFFFFFFF])
def test_reserved_table_rejected_when_enabled(family: IPFamily, table: int) -> None:  # 2
    with pytest.raises(ConfigError, match="RouteTableRanges"):
        Harness(family, routing_table=table)


def test_reserved_table_accepted_when_disabled(family: IPFamily) -> None:  # 2
    h = Harness(family, routing_table=0, enabled=False)
    assert h.manager.route_table is None
    h.manager.apply()  # nothing to tidy in table 0: no error


def test_unknown_ip_version_rejected() -> None:  # 3
    with pytest.raises(ValueError):
        IPFamily(7)


# §5.2 ------------------------------------------------------------------------------------------


def test_first_apply_creates_link_and_waits(h: Harness) -> None:  # 4
    with pytest.raises(WaitingForLink):
        h.manager.apply()
    link = h.kernel.link(h.iface)
    assert link.kind == "wireguard"
    assert link.mtu == MTU
    assert h.kernel.counters.link_add == 1
    assert h.kernel.counters.wireguard_clients == 0


def test_link_not_up_keeps_waiting(h: Harness) -> None:  # 5, 6
    with pytest.raises(WaitingForLink):
        h.manager.apply()
    h.manager.on_iface_state_changed(h.iface, h.kernel.link(h.iface).index, False)
    with pytest.raises(WaitingForLink):
        h.manager.apply()
    assert h.kernel.counters.link_add == 1
    assert h.kernel.counters.wireguard_clients == 0


def test_similar_iface_name_ignored(h: Harness) -> None:  # 7
    with pytest.raises(WaitingForLink):
        h.manager.apply()
    h.manager.on_iface_state_changed(h.iface + ".foobar", 42, True)
    with pytest.raises(WaitingForLink):
        h.manager.apply()
    assert h.kernel.counters.link_add == 1
    assert h.kernel.counters.wireguard_clients == 0


def test_status_callback_error_is_returned(h: Harness) -> None:  # 8
    with pytest.raises(WaitingForLink):
        h.manager.apply()
    h.link_up()
    error = RuntimeError("datastore says no")
    h.publish_error = error
    with pytest.raises(RuntimeError) as raised:
        h.manager.apply()
    assert raised.value is error
    h.publish_error = None
    h.manager.apply()
    assert len(h.published) == 1


def test_link_up_configures_device_and_publishes_key(h: Harness) -> None:  # 9
    h.start()
    device = h.device()
    assert device.fwmark == FWMARK
    assert device.listen_port == PORTS[h.family]
    assert device.private_key is not None and not device.private_key.is_zero
    assert device.public_key == device.private_key.public_key()
    assert h.published == [device.public_key]
    assert h.kernel.counters.wireguard_clients == 1


def test_rule_added_once(h: Harness) -> None:  # 10
    h.start()
    h.manager.apply()
    assert h.our_rules() == [h.expected_rule()]
    assert h.kernel.counters.rule_add == 1
    assert h.kernel.counters.rule_delete == 0


def test_incorrect_rule_removed_on_resync(h: Harness) -> None:  # 11
    h.start()
    bad = Rule(h.family, 108, TABLE, 20, 20, invert=False)
    h.kernel.insert_rule(bad)
    before = h.kernel.counters
    h.manager.queue_resync()
    h.manager.apply()
    diff = h.kernel.counters - before
    assert h.our_rules() == [h.expected_rule()]
    assert diff.rule_delete == 1
    assert diff.rule_add == 0


def test_zero_local_key_triggers_republish(h: Harness) -> None:  # 12
    h.start()
    original = h.device().private_key
    h.manager.endpoint_wireguard_update("my-host", Key.zero(), h.ip("1.2.3.4"))
    h.manager.apply()
    device = h.device()
    assert h.addresses() == [h.ip("1.2.3.4")]
    assert device.private_key == original
    assert device.listen_port == PORTS[h.family]
    assert device.fwmark == FWMARK
    assert device.public_key is not None
    assert h.published == [device.public_key, device.public_key]


def test_correct_local_key_no_republish(h: Harness) -> None:  # 13
    h.start()
    h.manager.endpoint_wireguard_update("my-host", h.published[0], h.ip("1.2.3.4"))
    h.manager.apply()
    assert h.addresses() == [h.ip("1.2.3.4")]
    assert len(h.published) == 1


@pytest.mark.parametrize("order", ["key-first", "address-first"])
def test_host_encryption_uses_node_address(h: Harness, order: str) -> None:  # 14, 15
    h.start()
    if order == "key-first":
        h.manager.endpoint_wireguard_update("my-host", h.published[0], None)
        h.manager.endpoint_update("my-host", h.ip("1.2.3.4"))
    else:
        h.manager.endpoint_update("my-host", h.ip("1.2.3.4"))
        h.manager.endpoint_wireguard_update("my-host", h.published[0], None)
    h.manager.apply()
    assert h.addresses() == [h.ip("1.2.3.4")]
    assert len(h.published) == 1


def test_local_routes_filtered_and_rule_created(h: Harness) -> None:  # 16
    h.start()
    for c in ("12.12.10.10/32", "12.12.10.0/24", "12.12.11.0/32"):
        h.manager.route_update("my-host", h.cidr(c))
    h.manager.apply()
    assert h.kernel.counters.rule_add == 1
    assert h.kernel.counters.rule_delete == 0
    # The /32 inside the local /24 is not routed separately; everything local is a throw route.
    assert set(h.route_kinds()) == {h.cidr("12.12.10.0/24"), h.cidr("12.12.11.0/32")}
    assert {k.value for k in h.route_kinds().values()} == {"throw"}


def test_deleted_rule_restored_only_on_resync(h: Harness) -> None:  # 17
    h.start()
    h.kernel.remove_rule(h.expected_rule())
    h.manager.apply()
    assert h.our_rules() == []
    before = h.kernel.counters
    h.manager.queue_resync()
    h.manager.apply()
    diff = h.kernel.counters - before
    assert h.our_rules() == [h.expected_rule()]
    assert (diff.rule_add, diff.rule_delete) == (1, 0)


def test_replaced_rule_fixed_on_resync(h: Harness) -> None:  # 18
    h.start()
    h.kernel.remove_rule(h.expected_rule())
    bad = Rule(h.family, 99, TABLE, 0, FWMARK, invert=False)
    h.kernel.insert_rule(bad)
    h.manager.apply()
    assert h.our_rules() == [bad]
    h.manager.queue_resync()
    h.manager.apply()
    assert h.our_rules() == [h.expected_rule()]


def test_immediate_link_up(family: IPFamily) -> None:  # 19
    h = Harness(family, FakeKernel(immediate_link_up=True))
    h.manager.apply()
    assert h.kernel.counters.link_add == 1
    assert h.kernel.counters.wireguard_clients == 1
    assert len(h.published) == 1


def test_existing_up_link_adopted(family: IPFamily) -> None:  # 20
    kernel = FakeKernel()
    h = Harness(family, kernel)
    kernel.add_link(h.iface, kind="wireguard", mtu=MTU, up=True)
    h.manager.apply()
    assert kernel.counters.link_add == 0
    assert kernel.counters.wireguard_clients == 1


def test_existing_device_corrected_and_key_kept(family: IPFamily) -> None:  # 21
    kernel = FakeKernel()
    h = Harness(family, kernel)
    kernel.add_link(h.iface, kind="wireguard", mtu=MTU, up=True)
    private = PrivateKey.generate()
    kernel.tamper_device(h.iface, private_key=private, listen_port=1010, fwmark=11)
    h.manager.endpoint_wireguard_update("my-host", private.public_key(), h.ip("1.2.3.4"))
    h.manager.apply()
    device = h.device()
    assert kernel.counters.link_add == 0
    assert device.listen_port == PORTS[family]
    assert device.fwmark == FWMARK
    assert device.private_key == private.clamped()
    assert h.addresses() == [h.ip("1.2.3.4")]
    assert h.published == [private.public_key()]


def test_wrong_mtu_corrected(h: Harness) -> None:
    h.start()
    h.kernel.set_link_mtu(h.iface, 1300)
    h.manager.queue_resync()
    h.manager.apply()
    assert h.kernel.link(h.iface).mtu == MTU


def test_other_addresses_removed_link_local_kept(h: Harness) -> None:
    h.start()
    stray = InterfaceAddress(h.ip("9.9.9.9"), h.family.host_prefixlen)
    h.kernel.add_address(h.iface, stray)
    if h.family is IPFamily.V6:
        import ipaddress

        h.kernel.add_address(h.iface, InterfaceAddress(ipaddress.IPv6Address("fe80::1"), 64))
    h.manager.endpoint_wireguard_update("my-host", h.published[0], h.ip("1.2.3.4"))
    h.manager.apply()
    addrs = h.addresses()
    assert h.ip("9.9.9.9") not in addrs
    assert h.ip("1.2.3.4") in addrs
    if h.family is IPFamily.V6:
        assert len(addrs) == 2  # the link-local address is not ours to remove
