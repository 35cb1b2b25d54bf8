"""meshcrypt.wireguard.mtu: host MTU detection and the WireGuard MTU derived from it."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from meshcrypt.fakes import FakeKernel
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.dataplane import Link
from meshcrypt.model.net import IPFamily
from meshcrypt.wireguard.mtu import (
    DEFAULT_HOST_MTU,
    HostMtu,
    MtuDetector,
    host_mtu,
    wireguard_mtu,
)

V4, V6 = IPFamily.V4, IPFamily.V6
PATTERN = FelixConfig().mtu_iface_pattern


def link(name: str, mtu: int, up: bool = True, index: int = 2) -> Link:
    return Link(name, index, "veth", mtu, admin_up=up, oper_up=up)


def test_smallest_mtu_of_the_matching_up_links():
    links = [
        link("lo", 65536),
        link("eth0", 9000),
        link("eth1", 1500),
        link("ens3", 8000),
        link("wlan0", 1400, up=False),  # down: ignored
        link("cali1234", 1300),  # does not match the pattern
        link("wireguard.cali", 1420),
    ]
    assert host_mtu(links, PATTERN) == HostMtu(1500, ("eth1", "ens3", "eth0"))


@pytest.mark.parametrize(
    "name",
    ["eth0", "ens3", "enp0s3", "eno1", "enx001122334455", "wlan0", "wlp2s0", "wwan0", "ibp1s0"],
)
def test_the_default_pattern_matches_usual_host_interface_names(name):
    assert host_mtu([link(name, 1500)], PATTERN).detected


@pytest.mark.parametrize("name", ["lo", "docker0", "cali12ab", "veth1", "wireguard.cali", "tun0"])
def test_the_default_pattern_skips_virtual_interfaces(name):
    assert not host_mtu([link(name, 1500)], PATTERN).detected


def test_nothing_matching_falls_back_to_1460():
    found = host_mtu([link("lo", 65536), link("eth0", 9000, up=False)], PATTERN)
    assert found == HostMtu(DEFAULT_HOST_MTU)
    assert not found.detected
    assert wireguard_mtu(found.mtu, V4) == 1400
    assert wireguard_mtu(found.mtu, V6) == 1380


def test_the_pattern_is_searched_like_go_match_string():
    # Go's MatchString is unanchored: without ^ the pattern matches anywhere in the name.
    assert host_mtu([link("my-eth0", 1500)], "eth").detected
    assert not host_mtu([link("my-eth0", 1500)], "^eth").detected


def test_an_invalid_pattern_falls_back_to_the_default(caplog):
    with caplog.at_level(logging.WARNING):
        found = host_mtu([link("eth0", 1500)], "(")
    assert found.mtu == 1500
    assert "not a valid regular expression" in caplog.text


@pytest.mark.parametrize(
    ("host", "v4", "v6"), [(1500, 1440, 1420), (9000, 8940, 8920), (1460, 1400, 1380)]
)
def test_overhead_is_60_for_ipv4_and_80_for_ipv6(host, v4, v6):
    assert wireguard_mtu(host, V4) == v4
    assert wireguard_mtu(host, V6) == v6


def test_a_tiny_underlay_never_gives_ipv6_less_than_1280():
    assert wireguard_mtu(1300, V6) == 1280
    assert wireguard_mtu(1300, V4) == 1240


def kernel_with(*links: tuple[str, int, bool]) -> FakeKernel:
    kernel = FakeKernel()
    for name, mtu, up in links:
        kernel.add_link(name, mtu=mtu, up=up)
    return kernel


def test_detector_is_an_mtu_source_for_auto_only():
    detector = MtuDetector(kernel_with(("eth0", 9000, True)))
    auto = FelixConfig()
    assert detector(auto, V4) == 8940
    assert detector(auto, V6) == 8920
    explicit = dataclasses.replace(auto, wireguard_mtu=1400, wireguard_mtu_v6=0)
    assert detector(explicit, V4) is None  # the configured 1400 applies
    assert detector(explicit, V6) == 8920
    assert explicit.for_family(V4, detector(explicit, V4)).mtu == 1400
    assert auto.for_family(V6, detector(auto, V6)).mtu == 8920


def test_detector_refresh_reports_changes_only():
    kernel = kernel_with(("eth0", 9000, True), ("eth1", 9000, False))
    detector = MtuDetector(kernel)
    assert detector.host.mtu == 9000
    assert not detector.refresh()
    kernel.set_link_mtu("eth1", 1500)  # still down
    assert not detector.refresh()
    kernel.set_link_up("eth1")
    assert detector.refresh()
    assert detector(FelixConfig(), V4) == 1440
    kernel.delete_link("eth1")
    assert detector.refresh()
    assert detector(FelixConfig(), V4) == 8940


def test_detector_follows_the_configured_pattern(caplog):
    kernel = kernel_with(("eth0", 9000, True), ("bond0", 1500, True))
    detector = MtuDetector(kernel)
    assert detector.relevant("eth0")
    assert not detector.relevant("bond0")
    bonded = dataclasses.replace(FelixConfig(), mtu_iface_pattern=r"^bond")
    assert detector(bonded, V4) == 1440
    assert detector.relevant("bond0")
    nothing = dataclasses.replace(FelixConfig(), mtu_iface_pattern=r"^nomatch")
    with caplog.at_level(logging.WARNING):
        assert detector(nothing, V4) == 1400
        assert detector(nothing, V6) == 1380
    assert caplog.text.count("Failed to auto-detect host MTU") == 1
