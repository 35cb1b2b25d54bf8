"""meshcrypt.adapters.autodetect: the IP / IP6 settings and reading iproute2's JSON."""

from __future__ import annotations

import ipaddress

import pytest

from meshcrypt.adapters.autodetect import (
    AUTODETECT,
    default_route_device,
    parse_ip_setting,
    pick_address,
)
from meshcrypt.model.errors import ConfigError
from meshcrypt.model.net import IPFamily

V4, V6 = IPFamily.V4, IPFamily.V6


@pytest.mark.parametrize(
    ("value", "family", "expected"),
    [
        ("autodetect", V4, AUTODETECT),
        (" AutoDetect ", V6, AUTODETECT),
        ("none", V4, None),
        ("NONE", V6, None),
        ("192.168.50.11/24", V4, ipaddress.IPv4Interface("192.168.50.11/24")),
        ("fd00:50::11/64", V6, ipaddress.IPv6Interface("fd00:50::11/64")),
    ],
)
def test_parse_ip_setting(value, family, expected):
    assert parse_ip_setting(value, family) == expected


@pytest.mark.parametrize(
    ("value", "family", "message"),
    [
        ("192.168.50.11", V4, r"IP.*prefix length.*192\.168\.50\.11/24"),
        ("fd00::11", V6, r"IP6.*prefix length"),
        ("fd00::11/64", V4, "for IP: not an IPv4"),
        ("10.0.0.1/24", V6, "for IP6: not an IPv6"),
        ("10.0.0.1/33", V4, "CIDR form"),
        ("eth0", V4, "autodetect, none or a CIDR"),
        ("", V4, "autodetect, none or a CIDR"),
    ],
)
def test_parse_ip_setting_rejects_with_a_clear_message(value, family, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_ip_setting(value, family)
    assert info.value.param == ("IP" if family is V4 else "IP6")


def test_default_route_device_picks_the_lowest_metric_unicast_route():
    routes = [
        {"dst": "default", "gateway": "10.0.0.1", "dev": "eth1", "metric": 200},
        {"type": "unreachable", "dst": "default", "metric": 1},
        {"dst": "default", "gateway": "10.0.1.1", "dev": "eth0", "metric": 100},
        {"dst": "default", "gateway": "10.0.2.1", "dev": "eth2", "metric": 100},
    ]
    assert default_route_device(routes, V4) == "eth0"


def test_default_route_device_handles_multipath_and_absent_routes():
    multipath = [{"dst": "default", "nexthops": [{"dev": "bond0"}, {"dev": "eth3"}]}]
    assert default_route_device(multipath, V4) == "bond0"
    assert default_route_device([], V4) is None
    assert default_route_device("garbage", V6) is None


def test_default_route_device_v6_defaults_to_the_kernel_metric():
    routes = [
        {"dst": "default", "dev": "eth1", "metric": 2048},
        {"dst": "default", "dev": "eth0"},  # no metric shown: 1024
    ]
    assert default_route_device(routes, V6) == "eth0"


def test_pick_address_takes_the_first_usable_global_address():
    links = [
        {
            "ifname": "eth0",
            "addr_info": [
                {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"},
                {
                    "family": "inet6",
                    "local": "2001:db8::aaaa",
                    "prefixlen": 64,
                    "scope": "global",
                    "temporary": True,
                },
                {
                    "family": "inet6",
                    "local": "2001:db8::1",
                    "prefixlen": 64,
                    "scope": "global",
                    "deprecated": True,
                },
                {"family": "inet6", "local": "2001:db8::2", "prefixlen": 64, "scope": "global"},
                {"family": "inet", "local": "10.0.0.2", "prefixlen": 24, "scope": "global"},
                {"family": "inet", "local": "10.0.0.3", "prefixlen": 24, "scope": "global"},
            ],
        }
    ]
    assert pick_address(links, V6) == ipaddress.IPv6Interface("2001:db8::2/64")
    assert pick_address(links, V4) == ipaddress.IPv4Interface("10.0.0.2/24")


def test_pick_address_without_a_global_address():
    links = [
        {"addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]}
    ]
    assert pick_address(links, V4) is None
    assert pick_address([], V4) is None
    assert (
        pick_address(
            [{"addr_info": [{"family": "inet", "local": "x", "prefixlen": 1, "scope": "global"}]}],
            V4,
        )
        is None
    )
