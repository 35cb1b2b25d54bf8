"""Keepalive, threaded NAPI, src_valid_mark and the interface address with host encryption."""

from __future__ import annotations

import logging

import pytest

from meshcrypt.fakes import FakeKernel
from meshcrypt.model.dataplane import Peer
from meshcrypt.model.net import IPFamily
from meshcrypt.wireguard.manager import SRC_VALID_MARK, napi_path
from tests.unit.wireguard.harness import Harness, key


def _running(family: IPFamily, **changes: object) -> Harness:
    h = Harness(family, FakeKernel(immediate_link_up=True), **changes)
    h.manager.apply()
    return h


def test_keepalive_on_every_peer_and_restored_on_resync(family: IPFamily) -> None:
    h = _running(family, persistent_keepalive=25)
    k1 = key()
    h.peer("peer1", "1.2.3.5", k1, "192.168.1.0/24")
    h.manager.apply()
    assert h.peers()[k1].persistent_keepalive == 25
    peer = h.peers()[k1]
    h.kernel.tamper_device(h.iface, peers=[Peer(k1, peer.endpoint, peer.allowed_ips, 0)])
    h.manager.queue_resync()
    h.manager.apply()
    assert h.peers()[k1].persistent_keepalive == 25


def test_keepalive_off_by_default(h: Harness) -> None:
    h.kernel.immediate_link_up = True
    k1 = key()
    h.peer("peer1", "1.2.3.5", k1)
    h.manager.apply()
    assert h.peers()[k1].persistent_keepalive == 0


@pytest.mark.parametrize("threading", [True, False])
def test_napi_written_once_a_node_is_known(family: IPFamily, threading: bool) -> None:
    h = _running(family, threading=threading)
    path = napi_path(h.iface)
    assert h.kernel.sysfs.read(path) is None  # no node yet: the kernel would refuse
    h.peer("peer1", "1.2.3.5", key())
    h.manager.apply()
    assert h.kernel.sysfs.read(path) == ("1" if threading else "0")
    writes = h.kernel.sysfs.write_count
    h.manager.apply()
    assert h.kernel.sysfs.write_count == writes  # in sync: not rewritten every apply


def test_napi_not_supported_reported_once(
    family: IPFamily, caplog: pytest.LogCaptureFixture
) -> None:
    """Deliberate difference (Calico #10339): a refusing kernel is reported once, not every apply."""
    h = _running(family, threading=True)
    h.kernel.sysfs.refuse(napi_path(h.iface))
    h.peer("peer1", "1.2.3.5", key())
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            h.manager.apply()
            h.manager.queue_resync()
            h.manager.apply()
    warnings = [r for r in caplog.records if "NAPI" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "not supported" in warnings[0].getMessage()


def test_src_valid_mark_with_host_encryption_ipv4_only(family: IPFamily) -> None:
    h = _running(family, host_encryption=True)
    expected = "1" if family is IPFamily.V4 else None
    assert h.kernel.sysfs.read(SRC_VALID_MARK) == expected


def test_src_valid_mark_untouched_without_host_encryption(family: IPFamily) -> None:
    h = _running(family, host_encryption=False)
    assert h.kernel.sysfs.read(SRC_VALID_MARK) is None


def test_interface_address_follows_node_address_with_host_encryption(family: IPFamily) -> None:
    """Beyond the reference: with host encryption and no tunnel address, a changed node address is
    applied to the device (the reference keeps the first one until restart)."""
    h = _running(family, host_encryption=True)
    h.manager.endpoint_update("my-host", h.ip("1.2.3.4"))
    h.manager.apply()
    assert h.addresses() == [h.ip("1.2.3.4")]
    h.manager.endpoint_update("my-host", h.ip("1.2.3.9"))
    h.manager.apply()
    assert h.addresses() == [h.ip("1.2.3.9")]
    h.manager.endpoint_wireguard_update("my-host", h.published[0], h.ip("10.65.0.1"))
    h.manager.apply()
    assert h.addresses() == [h.ip("10.65.0.1")]  # a tunnel address wins


def test_no_address_without_host_encryption_or_tunnel(family: IPFamily) -> None:
    h = _running(family, host_encryption=False)
    h.manager.endpoint_update("my-host", h.ip("1.2.3.4"))
    h.manager.apply()
    assert h.addresses() == []


def test_ipv6_uses_the_same_table_number() -> None:
    """Deliberate difference: one table index serves both families (the kernel keeps per-family
    tables); the reference allocates a second index it never uses."""
    kernel = FakeKernel(immediate_link_up=True)
    v4, v6 = Harness(IPFamily.V4, kernel), Harness(IPFamily.V6, kernel)
    for h in (v4, v6):
        h.manager.route_update("my-host", h.cidr("192.180.0.0/30"))
        h.manager.apply()
    assert v4.our_rules() == [v4.expected_rule()]
    assert v6.our_rules() == [v6.expected_rule()]
    assert len(v4.routes()) == len(v6.routes()) == 1
    assert v6.routes()[v6.cidr("192.180.0.0/30")].metric == 1024
