"""Port behaviour that a real kernel (and wireguard-go) and the fakes must share.

Every check takes a `ContractEnv` (one throwaway namespace seen through the ports) and, for the
per-family ones, an `IPFamily`. They assert only what Linux does (measured: see the fakes' docstrings),
use no fault injection, and remove what they create so they can run in any order in one namespace.
`test_fakes_contract.py` runs them against `meshcrypt.fakes`; an integration suite runs the same lists,
`CHECKS` and `FAMILY_CHECKS`, against the real adapters in a network namespace.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from meshcrypt.model.dataplane import (
    DeviceConfig,
    Endpoint,
    InterfaceAddress,
    PeerConfig,
    Route,
    RouteKind,
    Rule,
)
from meshcrypt.model.errors import AlreadyExists, KernelError, NotFound, NotSupported
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import CIDR, IPAddress, IPFamily
from meshcrypt.ports import Netlink, WireguardDevices

MISSING_INDEX = 999_999
PROTO_BOOT = 3


@dataclass(frozen=True)
class ContractEnv:
    """One namespace as the checks see it."""

    netlink: Netlink
    wireguard: WireguardDevices
    wireguard_device: str  # an existing WireGuard device the checks may reconfigure freely
    table: int  # a routing table nothing else uses
    make_link: Callable[[str], int]  # create a plain link, administratively down; its ifindex
    set_link_down: Callable[[int], None]  # the ports cannot take a link down; the harness can


# ---- helpers -----------------------------------------------------------------------------------


def _net(family: IPFamily, v4: str, v6: str) -> CIDR:
    return ipaddress.ip_network(v4 if family is IPFamily.V4 else v6)


def _ip(family: IPFamily, v4: str, v6: str) -> IPAddress:
    return ipaddress.ip_address(v4 if family is IPFamily.V4 else v6)


def _device_route(env: ContractEnv, dst: CIDR, ifindex: int) -> Route:
    family = IPFamily.of(dst)
    return Route(env.table, dst, RouteKind.DEVICE, ifindex, PROTO_BOOT, family.default_route_metric)


def _throw_route(env: ContractEnv, dst: CIDR) -> Route:
    family = IPFamily.of(dst)
    return Route(env.table, dst, RouteKind.THROW, None, PROTO_BOOT, family.default_route_metric)


@contextmanager
def _link(env: ContractEnv, name: str, *, up: bool) -> Iterator[int]:
    index = env.make_link(name)
    try:
        if up:
            env.netlink.link_set_up(index)
        yield index
    finally:
        if env.netlink.link_by_name(name) is not None:
            env.netlink.link_delete(index)


def _clear_table(env: ContractEnv, family: IPFamily) -> None:
    env.netlink.routes_delete(env.netlink.routes(env.table, family))


# ---- links -------------------------------------------------------------------------------------


def check_loopback(env: ContractEnv) -> None:
    lo = env.netlink.link_by_name("lo")
    assert lo is not None
    assert (lo.index, lo.admin_up) == (1, True)


def check_missing_link_is_none(env: ContractEnv) -> None:
    assert env.netlink.link_by_name("ct-nothing") is None


def check_link_mtu_and_up(env: ContractEnv) -> None:
    nl = env.netlink
    with _link(env, "ct-mtu", up=False) as index:
        link = nl.link_by_name("ct-mtu")
        assert link is not None
        assert (link.index, link.admin_up) == (index, False)
        nl.link_set_mtu(index, 1400)
        nl.link_set_up(index)
        link = nl.link_by_name("ct-mtu")
        assert link is not None
        assert (link.mtu, link.admin_up) == (1400, True)
        nl.link_delete(index)
        assert nl.link_by_name("ct-mtu") is None


def check_link_errors(env: ContractEnv) -> None:
    nl = env.netlink
    with pytest.raises(NotFound):
        nl.link_set_mtu(MISSING_INDEX, 1400)
    with pytest.raises(NotFound):
        nl.link_set_up(MISSING_INDEX)
    with pytest.raises(NotFound):
        nl.link_delete(MISSING_INDEX)
    with pytest.raises(NotSupported):
        nl.link_delete(1)  # the loopback cannot be deleted
    with _link(env, "ct-bad", up=False) as index:
        with pytest.raises(KernelError) as caught:
            nl.link_set_mtu(index, 10)
        assert caught.value.errno == errno.EINVAL


# ---- addresses ---------------------------------------------------------------------------------


def check_addresses(env: ContractEnv, family: IPFamily) -> None:
    nl = env.netlink
    host = InterfaceAddress(_ip(family, "10.231.0.1", "fd00:231::1"), family.host_prefixlen)
    other = IPFamily.V6 if family is IPFamily.V4 else IPFamily.V4
    with _link(env, "ct-addr", up=False) as index:
        nl.address_add(index, host)
        assert host in nl.addresses(index, family)
        assert host not in nl.addresses(index, other)
        with pytest.raises(AlreadyExists):
            nl.address_add(index, host)
        nl.address_delete(index, host)
        assert host not in nl.addresses(index, family)
        with pytest.raises(KernelError) as caught:
            nl.address_delete(index, host)
        assert caught.value.errno == errno.EADDRNOTAVAIL


def check_address_prefix_identity(env: ContractEnv, family: IPFamily) -> None:
    """IPv4 tells addresses apart by prefix length too; IPv6 by the address alone."""
    nl = env.netlink
    ip = _ip(family, "10.232.0.1", "fd00:232::1")
    host, wide = (
        InterfaceAddress(ip, family.host_prefixlen),
        InterfaceAddress(ip, 24 if family is IPFamily.V4 else 64),
    )
    with _link(env, "ct-plen", up=False) as index:
        nl.address_add(index, host)
        if family is IPFamily.V4:
            nl.address_add(index, wide)
            assert {host, wide} <= set(nl.addresses(index, family))
        else:
            with pytest.raises(AlreadyExists):
                nl.address_add(index, wide)
        with pytest.raises(KernelError) as caught:
            nl.address_delete(index, InterfaceAddress(ip, 30 if family is IPFamily.V4 else 96))
        assert caught.value.errno == errno.EADDRNOTAVAIL


# ---- routes ------------------------------------------------------------------------------------


def check_routes_roundtrip(env: ContractEnv, family: IPFamily) -> None:
    nl = env.netlink
    device_dst = _net(family, "10.233.1.0/24", "fd00:233:1::/64")
    throw_dst = _net(family, "10.233.2.0/24", "fd00:233:2::/64")
    with _link(env, "ct-rt", up=True) as index:
        device, throw = _device_route(env, device_dst, index), _throw_route(env, throw_dst)
        try:
            nl.routes_replace([device, throw])
            assert set(nl.routes(env.table, family)) == {device, throw}
            nl.routes_replace([device, throw])  # replacing with the same values changes nothing
            assert set(nl.routes(env.table, family)) == {device, throw}
            # Same key, other kind: replaced in place, not added.
            moved = _device_route(env, throw_dst, index)
            nl.routes_replace([moved])
            assert set(nl.routes(env.table, family)) == {device, moved}
            nl.routes_delete([device])
            assert nl.routes(env.table, family) == [moved]
            nl.routes_delete([device])  # already gone: not an error
            nl.routes_delete([moved])
            assert nl.routes(env.table, family) == []
        finally:
            _clear_table(env, family)


def check_device_route_needs_an_up_link(env: ContractEnv, family: IPFamily) -> None:
    nl = env.netlink
    dst = _net(family, "10.234.0.0/24", "fd00:234::/64")
    with _link(env, "ct-down", up=False) as index:
        with pytest.raises(KernelError) as caught:
            nl.routes_replace([_device_route(env, dst, index)])
        assert caught.value.errno == errno.ENETDOWN
    with pytest.raises(NotFound):
        nl.routes_replace([_device_route(env, dst, MISSING_INDEX)])
    assert nl.routes(env.table, family) == []


def check_link_down_and_delete_drop_device_routes(env: ContractEnv, family: IPFamily) -> None:
    nl = env.netlink
    throw = _throw_route(env, _net(family, "10.235.9.0/24", "fd00:235:9::/64"))
    try:
        nl.routes_replace([throw])
        with _link(env, "ct-casc", up=True) as index:
            nl.routes_replace(
                [_device_route(env, _net(family, "10.235.1.0/24", "fd00:235:1::/64"), index)]
            )
            env.set_link_down(index)
            assert nl.routes(env.table, family) == [throw]
            nl.link_set_up(index)
            nl.routes_replace(
                [_device_route(env, _net(family, "10.235.2.0/24", "fd00:235:2::/64"), index)]
            )
            nl.link_delete(index)
            assert nl.routes(env.table, family) == [throw]
    finally:
        _clear_table(env, family)


def check_route_delete_matches_kind_and_interface(env: ContractEnv, family: IPFamily) -> None:
    """What a delete takes when the table holds someone else's route to the same destination.

    A device-route delete names its interface and takes only a route through it. A throw-route
    delete names no interface: IPv4 matches the route type, so a unicast route survives; IPv6
    ignores the type and takes whatever route the destination has (kernel semantics, both)."""
    nl = env.netlink
    dst = _net(family, "10.237.0.0/24", "fd00:237::/64")
    with _link(env, "ct-del-a", up=True) as a, _link(env, "ct-del-b", up=True) as b:
        theirs = _device_route(env, dst, a)
        try:
            nl.routes_replace([theirs])
            nl.routes_delete([_device_route(env, dst, b)])
            assert nl.routes(env.table, family) == [theirs]
            nl.routes_delete([_throw_route(env, dst)])
            left = [theirs] if family is IPFamily.V4 else []
            assert nl.routes(env.table, family) == left
            throw = _throw_route(env, dst)
            nl.routes_replace([throw])
            nl.routes_delete([_device_route(env, dst, a)])
            assert nl.routes(env.table, family) == [throw]
            nl.routes_delete([throw])
            assert nl.routes(env.table, family) == []
        finally:
            _clear_table(env, family)


def check_ipv6_metric_zero_is_stored_as_1024(env: ContractEnv) -> None:
    nl = env.netlink
    dst = ipaddress.ip_network("fd00:236::/64")
    with _link(env, "ct-metric", up=True) as index:
        try:
            nl.routes_replace([Route(env.table, dst, RouteKind.DEVICE, index, PROTO_BOOT, 0)])
            [stored] = nl.routes(env.table, IPFamily.V6)
            assert (stored.dst, stored.metric) == (dst, 1024)
        finally:
            _clear_table(env, IPFamily.V6)


# ---- rules -------------------------------------------------------------------------------------


def check_default_rules(env: ContractEnv, family: IPFamily) -> None:
    expected = [Rule(family, 0, 255, 0, 0, False), Rule(family, 32766, 254, 0, 0, False)]
    if family is IPFamily.V4:
        expected.append(Rule(family, 32767, 253, 0, 0, False))
    rules = env.netlink.rules(family)
    assert [r for r in rules if r in expected] == expected


def check_rules(env: ContractEnv, family: IPFamily) -> None:
    nl = env.netlink
    ours = Rule(family, 1099, env.table, 0x100000, 0x100000, True)
    twin = Rule(family, 1099, env.table, 0x100000, 0x100000, False)
    nl.rule_add(ours)
    try:
        rules = nl.rules(family)
        assert rules.count(ours) == 1
        assert rules.index(ours) > rules.index(Rule(family, 0, 255, 0, 0, False))
        assert rules.index(ours) < rules.index(Rule(family, 32766, 254, 0, 0, False))
        with pytest.raises(AlreadyExists):
            nl.rule_add(ours)
        with pytest.raises(AlreadyExists):  # the kernel's identity ignores the invert flag
            nl.rule_add(twin)
        nl.rule_delete(twin)  # ... on delete as well
        assert ours not in nl.rules(family)
        with pytest.raises(NotFound):
            nl.rule_delete(ours)
    finally:
        if ours in nl.rules(family):
            nl.rule_delete(ours)
    assert ours not in nl.rules(family)
    assert twin not in nl.rules(family)


# ---- WireGuard ---------------------------------------------------------------------------------


def _key(seed: int) -> Key:
    return PrivateKey(bytes([seed]) * 32).public_key()


def _reset_device(env: ContractEnv) -> None:
    env.wireguard.configure(env.wireguard_device, DeviceConfig(replace_peers=True))


def check_wireguard_missing_device(env: ContractEnv) -> None:
    with pytest.raises(NotFound):
        env.wireguard.device("ct-nowg")
    with pytest.raises(NotFound):
        env.wireguard.configure("ct-nowg", DeviceConfig(listen_port=41000))


def check_wireguard_settings(env: ContractEnv) -> None:
    wg, name = env.wireguard, env.wireguard_device
    private = PrivateKey(bytes(range(32)))  # not clamped: the device stores it clamped
    wg.configure(name, DeviceConfig(private_key=private, listen_port=41820, fwmark=0x100000))
    device = wg.device(name)
    assert device.name == name
    assert device.private_key == private.clamped()
    assert device.public_key == private.public_key()
    assert (device.listen_port, device.fwmark) == (41820, 0x100000)
    wg.configure(name, DeviceConfig(fwmark=0))
    device = wg.device(name)
    assert (device.listen_port, device.fwmark) == (41820, 0)
    assert device.private_key == private.clamped()


def check_wireguard_peers(env: ContractEnv, family: IPFamily) -> None:
    wg, name = env.wireguard, env.wireguard_device
    k1, k2 = _key(1), _key(2)
    a = _net(family, "10.237.1.0/24", "fd00:237:1::/64")
    b = _net(family, "10.237.2.0/24", "fd00:237:2::/64")
    c = _net(family, "10.237.3.0/24", "fd00:237:3::/64")
    e1 = Endpoint(_ip(family, "192.0.2.1", "2001:db8::1"), 51820)
    e2 = Endpoint(_ip(family, "192.0.2.2", "2001:db8::2"), 51821)
    _reset_device(env)
    try:
        wg.configure(
            name,
            DeviceConfig(
                peers=(
                    PeerConfig(k1, endpoint=e1, persistent_keepalive=25, allowed_ips=(a, b)),
                    PeerConfig(k2, allowed_ips=(c,)),
                )
            ),
        )
        peers = wg.device(name).peers
        assert set(peers) == {k1, k2}
        assert (peers[k1].endpoint, peers[k1].persistent_keepalive) == (e1, 25)
        assert peers[k1].allowed_ips == {a, b}
        assert (peers[k2].endpoint, peers[k2].allowed_ips) == (None, frozenset({c}))

        # An allowed IP given to another peer moves; update_only keeps what is not mentioned.
        wg.configure(
            name,
            DeviceConfig(peers=(PeerConfig(k2, update_only=True, endpoint=e2, allowed_ips=(b,)),)),
        )
        peers = wg.device(name).peers
        assert (peers[k1].allowed_ips, peers[k2].allowed_ips) == (frozenset({a}), frozenset({b, c}))
        assert (peers[k1].endpoint, peers[k2].endpoint) == (e1, e2)
        assert peers[k1].persistent_keepalive == 25

        wg.configure(
            name, DeviceConfig(peers=(PeerConfig(k2, replace_allowed_ips=True, allowed_ips=(a,)),))
        )
        peers = wg.device(name).peers
        assert (peers[k1].allowed_ips, peers[k2].allowed_ips) == (frozenset(), frozenset({a}))
        assert peers[k2].endpoint == e2

        wg.configure(name, DeviceConfig(peers=(PeerConfig(k1, remove=True),)))
        assert set(wg.device(name).peers) == {k2}

        wg.configure(
            name, DeviceConfig(replace_peers=True, peers=(PeerConfig(k1, allowed_ips=(c,)),))
        )
        peers = wg.device(name).peers
        assert set(peers) == {k1}
        assert (peers[k1].allowed_ips, peers[k1].endpoint) == (frozenset({c}), None)
    finally:
        _reset_device(env)
    assert wg.device(name).peers == {}


CHECKS: tuple[Callable[[ContractEnv], None], ...] = (
    check_loopback,
    check_missing_link_is_none,
    check_link_mtu_and_up,
    check_link_errors,
    check_ipv6_metric_zero_is_stored_as_1024,
    check_wireguard_missing_device,
    check_wireguard_settings,
)

FAMILY_CHECKS: tuple[Callable[[ContractEnv, IPFamily], None], ...] = (
    check_addresses,
    check_address_prefix_identity,
    check_routes_roundtrip,
    check_device_route_needs_an_up_link,
    check_link_down_and_delete_drop_device_routes,
    check_route_delete_matches_kind_and_interface,
    check_default_rules,
    check_rules,
    check_wireguard_peers,
)
