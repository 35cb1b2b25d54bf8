"""meshcrypt.fakes: the in-memory kernel behaves like Linux where the managers can tell, enforces the
reference mock's invariants, injects faults atomically and counts operations."""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from meshcrypt.fakes import (
    KEEP,
    Counters,
    FakeClock,
    FakeKernel,
    FakeNetlink,
    FakeSysfs,
    FakeWireguard,
    InvariantViolation,
    Op,
    default_rules,
)
from meshcrypt.model.dataplane import (
    DeviceConfig,
    Endpoint,
    InterfaceAddress,
    Peer,
    PeerConfig,
    Route,
    RouteKey,
    RouteKind,
    Rule,
)
from meshcrypt.model.errors import (
    AlreadyExists,
    KernelError,
    MeshcryptError,
    NotFound,
    NotSupported,
)
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import IPFamily
from meshcrypt.ports import Netlink, WireguardDevices

V4, V6 = IPFamily.V4, IPFamily.V6
net = ipaddress.ip_network
ip = ipaddress.ip_address


def key(seed: int) -> Key:
    return PrivateKey(bytes([seed]) * 32).public_key()


def device_route(dst: str, ifindex: int, table: int = 99, metric: int | None = None) -> Route:
    cidr = net(dst)
    if metric is None:
        metric = IPFamily.of(cidr).default_route_metric
    return Route(table, cidr, RouteKind.DEVICE, ifindex, 3, metric)


def throw_route(dst: str, table: int = 99) -> Route:
    cidr = net(dst)
    return Route(table, cidr, RouteKind.THROW, None, 3, IPFamily.of(cidr).default_route_metric)


def addr(text: str) -> InterfaceAddress:
    iface = ipaddress.ip_interface(text)
    return InterfaceAddress(iface.ip, iface.network.prefixlen)


@dataclass
class Env:
    kernel: FakeKernel
    nl: FakeNetlink
    wg: FakeWireguard


def make_env(**options: bool) -> Env:
    kernel = FakeKernel(**options)
    return Env(kernel, kernel.new_netlink_client(), kernel.new_wireguard_client())


@pytest.fixture
def env() -> Env:
    return make_env()


@pytest.fixture
def up_env() -> Env:
    return make_env(immediate_link_up=True)


# ---- the ports are implemented -----------------------------------------------------------------


def test_fakes_satisfy_the_port_protocols() -> None:
    kernel = FakeKernel()
    nl: Netlink = kernel.netlink_factory()()
    wg: WireguardDevices = kernel.wireguard_factory()()
    assert isinstance(nl, FakeNetlink)
    assert isinstance(wg, FakeWireguard)


# ---- initial state -----------------------------------------------------------------------------


def test_fresh_namespace_has_loopback_and_default_rules(env: Env) -> None:
    k = env.kernel
    assert [link.name for link in k.links()] == ["lo"]
    lo = k.link("lo")
    assert (lo.index, lo.admin_up, lo.oper_up) == (1, True, True)
    assert [(r.priority, r.table) for r in k.rules_of(V4)] == [(0, 255), (32766, 254), (32767, 253)]
    # Linux has no "lookup default" rule for IPv6 (checked on the kernel of this machine).
    assert [(r.priority, r.table) for r in k.rules_of(V6)] == [(0, 255), (32766, 254)]
    assert all((r.mark, r.mask, r.invert) == (0, 0, False) for f in IPFamily for r in k.rules_of(f))
    assert k.rules_of(V4) == list(default_rules(V4))
    assert k.all_routes() == []
    assert k.counters == Counters(netlink_clients=1, wireguard_clients=1)


# ---- links -------------------------------------------------------------------------------------


def test_new_wireguard_link_is_down_with_an_empty_device(env: Env) -> None:
    env.nl.link_add_wireguard("wg0", 0)
    link = env.kernel.link("wg0")
    assert (link.kind, link.mtu, link.admin_up, link.oper_up) == ("wireguard", 1420, False, False)
    assert link.index == 2
    device = env.wg.device("wg0")
    assert (device.private_key, device.public_key, device.listen_port, device.fwmark) == (
        None,
        None,
        0,
        0,
    )
    assert device.peers == {}
    env.nl.link_add_wireguard("wg1", 2000)
    assert (env.kernel.link("wg1").mtu, env.kernel.link("wg1").index) == (2000, 3)
    assert env.kernel.counters.link_add == 2


def test_link_add_errors_change_nothing(env: Env) -> None:
    env.nl.link_add_wireguard("wg0", 0)
    with pytest.raises(AlreadyExists):
        env.nl.link_add_wireguard("wg0", 0)
    for bad in ("", "a" * 16, "a/b", "a b"):
        with pytest.raises(KernelError) as caught:
            env.nl.link_add_wireguard(bad, 0)
        assert caught.value.errno == errno.EINVAL
    with pytest.raises(KernelError):
        env.nl.link_add_wireguard("wg-tiny", 10)
    assert [link.name for link in env.kernel.links()] == ["lo", "wg0"]
    assert env.kernel.counters.link_add == 1


def test_link_add_without_wireguard_is_not_supported() -> None:
    env = make_env(wireguard_supported=False)
    with pytest.raises(NotSupported):
        env.nl.link_add_wireguard("wg0", 0)
    assert env.nl.link_by_name("wg0") is None
    assert env.kernel.counters.link_add == 0
    env.kernel.wireguard_supported = True
    env.nl.link_add_wireguard("wg0", 0)
    assert env.nl.link_by_name("wg0") is not None


def test_link_set_up_waits_for_the_test_by_default(env: Env) -> None:
    env.nl.link_add_wireguard("wg0", 0)
    index = env.kernel.link("wg0").index
    env.nl.link_set_up(index)
    link = env.nl.link_by_name("wg0")
    assert link is not None
    assert (link.admin_up, link.oper_up) == (False, False)
    assert env.kernel.up_requested("wg0")
    assert env.kernel.counters.link_set_up == 1
    env.kernel.set_link_up("wg0")
    link = env.nl.link_by_name("wg0")
    assert link is not None
    assert (link.admin_up, link.oper_up) == (True, True)
    assert not env.kernel.up_requested("wg0")


def test_immediate_link_up(up_env: Env) -> None:
    up_env.nl.link_add_wireguard("wg0", 0)
    assert not up_env.kernel.link("wg0").admin_up
    up_env.nl.link_set_up(up_env.kernel.link("wg0").index)
    link = up_env.kernel.link("wg0")
    assert (link.admin_up, link.oper_up) == (True, True)


def test_link_state_admin_without_carrier(env: Env) -> None:
    env.kernel.add_link("eth0")
    env.kernel.set_link_state("eth0", admin_up=True, oper_up=False)
    link = env.kernel.link("eth0")
    assert (link.admin_up, link.oper_up) == (True, False)
    with pytest.raises(ValueError):
        env.kernel.set_link_state("eth0", admin_up=False, oper_up=True)


def test_link_set_mtu(env: Env) -> None:
    index = env.kernel.add_link("eth0").index
    env.nl.link_set_mtu(index, 9000)
    assert env.kernel.link("eth0").mtu == 9000
    with pytest.raises(KernelError) as caught:
        env.nl.link_set_mtu(index, 67)
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(NotFound):
        env.nl.link_set_mtu(42, 1500)
    assert env.kernel.link("eth0").mtu == 9000
    assert env.kernel.counters.link_set_mtu == 1


def test_operations_on_a_missing_index_raise_not_found(env: Env) -> None:
    calls: tuple[Callable[[], None], ...] = (
        lambda: env.nl.link_set_up(42),
        lambda: env.nl.link_delete(42),
        lambda: env.nl.address_add(42, addr("10.0.0.1/32")),
        lambda: env.nl.address_delete(42, addr("10.0.0.1/32")),
    )
    for call in calls:
        with pytest.raises(NotFound) as caught:
            call()
        assert caught.value.errno == errno.ENODEV
    assert env.nl.addresses(42, V4) == []
    with pytest.raises(NotFound):
        env.kernel.link("nope")


def test_loopback_cannot_be_deleted(env: Env) -> None:
    with pytest.raises(NotSupported):
        env.nl.link_delete(1)
    assert env.kernel.has_link("lo")


def test_link_delete_cascades_to_addresses_device_and_routes(up_env: Env) -> None:
    k, nl = up_env.kernel, up_env.nl
    wg = k.add_link("wg0", kind="wireguard", up=True).index
    eth = k.add_link("eth0", up=True).index
    nl.address_add(wg, addr("10.0.0.1/32"))
    nl.address_add(wg, addr("fd00::1/128"))
    keep = [
        device_route("10.1.0.0/24", eth),
        throw_route("10.2.0.0/24"),
        throw_route("fd00:2::/64"),
    ]
    doomed = [
        device_route("10.3.0.0/24", wg),
        device_route("10.3.0.0/24", wg, table=7),
        device_route("fd00:3::/64", wg),
    ]
    nl.routes_replace(keep + doomed)
    before = k.counters
    nl.link_delete(wg)
    assert not k.has_link("wg0")
    assert nl.link_by_name("wg0") is None
    assert nl.addresses(wg, V4) == []
    with pytest.raises(NotFound):
        up_env.wg.device("wg0")
    assert sorted(map(str, k.all_routes())) == sorted(map(str, keep))
    # Cascaded route removals are the kernel's doing, not counted as the caller's deletes.
    assert (k.counters - before).nonzero() == {"link_delete": 1}


def test_out_of_band_link_delete_cascades_too(up_env: Env) -> None:
    k = up_env.kernel
    wg = k.add_link("wg0", kind="wireguard", up=True).index
    up_env.nl.routes_replace([device_route("10.3.0.0/24", wg)])
    k.delete_link("wg0")
    assert k.all_routes() == []
    with pytest.raises(NotFound):
        k.device("wg0")


def test_setting_a_link_down_drops_its_device_routes_only(up_env: Env) -> None:
    k, nl = up_env.kernel, up_env.nl
    wg = k.add_link("wg0", kind="wireguard", up=True).index
    eth = k.add_link("eth0", up=True).index
    nl.address_add(wg, addr("10.0.0.1/32"))
    other = device_route("10.1.0.0/24", eth)
    throw = throw_route("10.2.0.0/24")
    nl.routes_replace(
        [other, throw, device_route("10.3.0.0/24", wg), device_route("fd00:3::/64", wg)]
    )
    k.set_link_up("wg0", up=False)
    assert nl.routes(99, V4) == [other, throw]
    assert nl.routes(99, V6) == []
    assert nl.addresses(wg, V4) == [addr("10.0.0.1/32")]


def test_add_link_helper_rejects_duplicates(env: Env) -> None:
    env.kernel.add_link("eth0", index=10)
    with pytest.raises(ValueError):
        env.kernel.add_link("eth0")
    with pytest.raises(ValueError):
        env.kernel.add_link("eth1", index=10)
    assert env.kernel.add_link("eth1").index == 11


# ---- addresses ---------------------------------------------------------------------------------


def test_addresses_by_family_and_collisions(env: Env) -> None:
    nl, index = env.nl, env.kernel.add_link("eth0").index
    nl.address_add(index, addr("10.0.0.1/32"))
    nl.address_add(index, addr("10.0.0.1/24"))  # IPv4: another prefix length is another address
    nl.address_add(index, addr("fd00::1/128"))
    assert nl.addresses(index, V4) == [addr("10.0.0.1/32"), addr("10.0.0.1/24")]
    assert nl.addresses(index, V6) == [addr("fd00::1/128")]
    with pytest.raises(AlreadyExists):
        nl.address_add(index, addr("10.0.0.1/32"))
    with pytest.raises(AlreadyExists):  # IPv6: the address alone is the identity
        nl.address_add(index, addr("fd00::1/64"))
    with pytest.raises(KernelError) as caught:
        nl.address_add(index, InterfaceAddress(ip("10.0.0.2"), 33))
    assert caught.value.errno == errno.EINVAL
    assert env.kernel.counters.address_add == 3


def test_address_delete(env: Env) -> None:
    nl, index = env.nl, env.kernel.add_link("eth0").index
    nl.address_add(index, addr("10.0.0.1/32"))
    with pytest.raises(KernelError) as caught:
        nl.address_delete(index, addr("10.0.0.1/24"))  # the prefix length must match
    assert caught.value.errno == errno.EADDRNOTAVAIL
    assert not isinstance(caught.value, NotFound)
    nl.address_delete(index, addr("10.0.0.1/32"))
    assert nl.addresses(index, V4) == []
    assert env.kernel.counters.address_delete == 1


# ---- routes ------------------------------------------------------------------------------------


def test_route_add_update_identical_and_delete_counts(up_env: Env) -> None:
    k, nl = up_env.kernel, up_env.nl
    wg = k.add_link("wg0", kind="wireguard", up=True).index
    start = k.counters
    nl.routes_replace([throw_route("10.1.0.0/24"), throw_route("10.2.0.0/24")])
    assert (k.counters - start).nonzero() == {"route_add": 2}
    mark = k.counters
    nl.routes_replace([throw_route("10.1.0.0/24")])
    assert (k.counters - mark).nonzero() == {}
    nl.routes_replace([device_route("10.1.0.0/24", wg)])
    assert (k.counters - mark).nonzero() == {"route_update": 1}
    assert k.route(RouteKey(99, net("10.1.0.0/24"), 0)) == device_route("10.1.0.0/24", wg)
    mark = k.counters
    nl.routes_delete([throw_route("10.2.0.0/24"), throw_route("10.9.0.0/24")])
    assert (k.counters - mark).nonzero() == {"route_delete": 1}
    assert nl.routes(99, V4) == [device_route("10.1.0.0/24", wg)]


def test_routes_are_keyed_by_table_dst_and_metric(up_env: Env) -> None:
    k, nl = up_env.kernel, up_env.nl
    wg = k.add_link("wg0", kind="wireguard", up=True).index
    nl.routes_replace(
        [
            device_route("10.1.0.0/24", wg),
            device_route("10.1.0.0/24", wg, metric=5),
            device_route("10.1.0.0/24", wg, table=7),
        ]
    )
    assert k.counters.route_add == 3
    assert len(nl.routes(99, V4)) == 2
    assert nl.routes(7, V4) == [device_route("10.1.0.0/24", wg, table=7)]
    assert nl.routes(99, V6) == []


def test_routes_are_listed_in_address_order(up_env: Env) -> None:
    up_env.nl.routes_replace([throw_route("10.2.0.0/24"), throw_route("10.1.0.0/16")])
    assert [str(r.dst) for r in up_env.nl.routes(99, V4)] == ["10.1.0.0/16", "10.2.0.0/24"]


def test_ipv6_metric_zero_becomes_1024_and_metric_zero_deletes_any(up_env: Env) -> None:
    k, nl = up_env.kernel, up_env.nl
    wg = k.add_link("wg0", kind="wireguard", up=True).index
    nl.routes_replace([device_route("fd00:1::/64", wg, metric=0)])
    [stored] = nl.routes(99, V6)
    assert stored.metric == 1024
    nl.routes_replace([device_route("10.1.0.0/24", wg, metric=7)])
    nl.routes_delete([device_route("10.1.0.0/24", wg, metric=0)])
    nl.routes_delete([device_route("fd00:1::/64", wg, metric=0)])
    assert k.all_routes() == []
    assert k.counters.route_delete == 2


def test_device_route_needs_an_up_link(env: Env) -> None:
    k, nl = env.kernel, env.nl
    nl.link_add_wireguard("wg0", 0)
    wg = k.link("wg0").index
    nl.link_set_up(wg)  # not honoured yet: immediate_link_up is off
    with pytest.raises(KernelError) as caught:
        nl.routes_replace([device_route("10.1.0.0/24", wg)])
    assert caught.value.errno == errno.ENETDOWN
    assert type(caught.value) is KernelError
    with pytest.raises(NotFound):
        nl.routes_replace([device_route("10.1.0.0/24", 42)])
    assert k.all_routes() == []
    k.set_link_up("wg0")
    nl.routes_replace([device_route("10.1.0.0/24", wg)])
    assert len(k.all_routes()) == 1


def test_a_failing_route_in_a_batch_does_not_stop_the_others(env: Env) -> None:
    k = env.kernel
    down = k.add_link("eth0").index
    with pytest.raises(KernelError):
        env.nl.routes_replace(
            [
                throw_route("10.1.0.0/24"),
                device_route("10.2.0.0/24", down),
                throw_route("10.3.0.0/24"),
            ]
        )
    assert [str(r.dst) for r in k.all_routes()] == ["10.1.0.0/24", "10.3.0.0/24"]
    assert k.counters.route_add == 2


def test_malformed_routes_are_caller_bugs(up_env: Env) -> None:
    bad_throw = Route(99, net("10.1.0.0/24"), RouteKind.THROW, 1, 3, 0)
    bad_device = Route(99, net("10.1.0.0/24"), RouteKind.DEVICE, None, 3, 0)
    for bad in (bad_throw, bad_device):
        with pytest.raises(InvariantViolation):
            up_env.nl.routes_replace([throw_route("10.9.0.0/24"), bad])
        with pytest.raises(InvariantViolation):
            up_env.nl.routes_delete([bad])
    assert up_env.kernel.all_routes() == []


def test_route_tamper_helpers(up_env: Env) -> None:
    k = up_env.kernel
    down = k.add_link("eth0").index
    k.put_route(device_route("10.1.0.0/24", down))  # out of band: no up check
    up_env.nl.routes_replace([throw_route("10.2.0.0/24")])
    k.remove_route(RouteKey(99, net("10.2.0.0/24"), 0))
    assert k.routes_in(99, V4) == [device_route("10.1.0.0/24", down)]
    with pytest.raises(KeyError):
        k.remove_route(RouteKey(99, net("10.2.0.0/24"), 0))
    assert k.counters.route_add == 1
    assert k.counters.route_delete == 0


# ---- rules -------------------------------------------------------------------------------------


WG_RULE = Rule(V4, 98, 99, 10, 10, True)


def test_rule_add_keeps_kernel_order(env: Env) -> None:
    nl = env.nl
    nl.rule_add(WG_RULE)
    late = Rule(V4, 98, 100, 10, 10, False)
    nl.rule_add(late)
    nl.rule_add(Rule(V4, 32766, 5, 0, 0, False))
    assert [(r.priority, r.table) for r in nl.rules(V4)] == [
        (0, 255),
        (98, 99),
        (98, 100),
        (32766, 254),
        (32766, 5),
        (32767, 253),
    ]
    assert nl.rules(V6) == list(default_rules(V6))
    assert env.kernel.counters.rule_add == 3


def test_rule_collision_ignores_invert(env: Env) -> None:
    nl = env.nl
    nl.rule_add(Rule(V4, 98, 99, 10, 10, False))
    with pytest.raises(AlreadyExists):
        nl.rule_add(WG_RULE)
    with pytest.raises(AlreadyExists):
        nl.rule_add(Rule(V4, 98, 99, 10, 10, False))
    nl.rule_add(Rule(V6, 98, 99, 10, 10, True))  # another family is another rule list
    nl.rule_add(Rule(V4, 98, 99, 10, 0xFF, True))  # another mask is another rule
    assert env.kernel.counters.rule_add == 3


def test_rule_delete_ignores_invert_and_takes_the_first(env: Env) -> None:
    k, nl = env.kernel, env.nl
    plain = Rule(V4, 98, 99, 10, 10, False)
    k.insert_rule(plain)
    k.insert_rule(WG_RULE)  # out of band: duplicates are possible
    nl.rule_delete(WG_RULE)
    assert WG_RULE in nl.rules(V4)
    assert plain not in nl.rules(V4)
    nl.rule_delete(WG_RULE)
    with pytest.raises(NotFound):
        nl.rule_delete(WG_RULE)
    assert nl.rules(V4) == list(default_rules(V4))
    assert k.counters.rule_delete == 2


def test_rule_tamper_helpers(env: Env) -> None:
    k = env.kernel
    k.insert_rule(WG_RULE)
    k.insert_rule(WG_RULE)
    assert k.rules_of(V4).count(WG_RULE) == 2
    k.remove_rule(WG_RULE)
    k.remove_rule(WG_RULE)
    k.remove_rule(default_rules(V4)[2])
    assert k.rules_of(V4) == list(default_rules(V4)[:2])
    assert k.counters == Counters(netlink_clients=1, wireguard_clients=1)


# ---- WireGuard configure -----------------------------------------------------------------------


@pytest.fixture
def wg_env(up_env: Env) -> Env:
    up_env.kernel.add_link("wg0", kind="wireguard", up=True)
    return up_env


def test_device_settings_and_key_clamping(wg_env: Env) -> None:
    private = PrivateKey(bytes(range(32)))
    assert private != private.clamped()
    wg_env.wg.configure("wg0", DeviceConfig(private_key=private, listen_port=1000, fwmark=10))
    device = wg_env.wg.device("wg0")
    assert device.private_key == private.clamped()
    assert device.public_key == private.public_key()
    assert (device.listen_port, device.fwmark) == (1000, 10)
    wg_env.wg.configure("wg0", DeviceConfig(listen_port=1001))
    device = wg_env.kernel.device("wg0")
    assert (device.listen_port, device.fwmark, device.private_key) == (1001, 10, private.clamped())
    wg_env.wg.configure("wg0", DeviceConfig(private_key=PrivateKey(bytes(32))))
    device = wg_env.kernel.device("wg0")
    assert (device.private_key, device.public_key) == (None, None)
    assert wg_env.kernel.counters.wg_configure == 3


def test_peers_endpoints_keepalive_and_allowed_ips(wg_env: Env) -> None:
    wg = wg_env.wg
    e1 = Endpoint(ip("1.2.3.5"), 1000)
    wg.configure(
        "wg0",
        DeviceConfig(
            peers=(
                PeerConfig(
                    key(1), endpoint=e1, persistent_keepalive=25, allowed_ips=(net("10.1.0.0/24"),)
                ),
                PeerConfig(key(2), allowed_ips=(net("10.2.0.0/24"), net("fd00:2::/64"))),
            )
        ),
    )
    peers = wg.device("wg0").peers
    assert peers[key(1)] == Peer(key(1), e1, frozenset({net("10.1.0.0/24")}), 25)
    assert peers[key(2)] == Peer(key(2), None, frozenset({net("10.2.0.0/24"), net("fd00:2::/64")}))
    # Without replace_allowed_ips new allowed IPs are added; unmentioned fields stay.
    wg.configure(
        "wg0", DeviceConfig(peers=(PeerConfig(key(1), allowed_ips=(net("10.3.0.0/24"),)),))
    )
    peer = wg.device("wg0").peers[key(1)]
    assert peer.allowed_ips == {net("10.1.0.0/24"), net("10.3.0.0/24")}
    assert (peer.endpoint, peer.persistent_keepalive) == (e1, 25)
    wg.configure(
        "wg0",
        DeviceConfig(peers=(PeerConfig(key(1), replace_allowed_ips=True, persistent_keepalive=0),)),
    )
    peer = wg.device("wg0").peers[key(1)]
    assert (peer.allowed_ips, peer.persistent_keepalive, peer.endpoint) == (frozenset(), 0, e1)


def test_an_allowed_ip_moves_to_the_peer_that_gets_it_last(wg_env: Env) -> None:
    wg, cidr = wg_env.wg, net("10.1.0.0/24")
    wg.configure(
        "wg0", DeviceConfig(peers=(PeerConfig(key(1), allowed_ips=(cidr, net("10.9.0.0/24"))),))
    )
    wg.configure("wg0", DeviceConfig(peers=(PeerConfig(key(2), allowed_ips=(cidr,)),)))
    peers = wg.device("wg0").peers
    assert peers[key(1)].allowed_ips == {net("10.9.0.0/24")}
    assert peers[key(2)].allowed_ips == {cidr}
    # Within one call, the later peer wins as well; the moved IP is no longer the first's.
    wg.configure(
        "wg0",
        DeviceConfig(
            peers=(
                PeerConfig(key(1), allowed_ips=(cidr,)),
                PeerConfig(key(3), allowed_ips=(cidr,)),
                PeerConfig(key(2), replace_allowed_ips=True),
            )
        ),
    )
    peers = wg.device("wg0").peers
    assert (peers[key(1)].allowed_ips, peers[key(2)].allowed_ips, peers[key(3)].allowed_ips) == (
        frozenset({net("10.9.0.0/24")}),
        frozenset(),
        frozenset({cidr}),
    )


def test_remove_update_only_and_replace_peers(wg_env: Env) -> None:
    wg = wg_env.wg
    wg.configure("wg0", DeviceConfig(peers=(PeerConfig(key(1)), PeerConfig(key(2)))))
    wg.configure(
        "wg0",
        DeviceConfig(
            peers=(
                PeerConfig(key(1), remove=True),
                PeerConfig(key(2), update_only=True, endpoint=Endpoint(ip("1.2.3.6"), 1000)),
            )
        ),
    )
    peers = wg.device("wg0").peers
    assert set(peers) == {key(2)}
    assert peers[key(2)].endpoint == Endpoint(ip("1.2.3.6"), 1000)
    wg.configure("wg0", DeviceConfig(replace_peers=True, peers=(PeerConfig(key(3)),)))
    assert set(wg.device("wg0").peers) == {key(3)}
    wg.configure("wg0", DeviceConfig(replace_peers=True))
    assert wg.device("wg0").peers == {}


def test_a_peer_with_the_devices_own_key_is_dropped(wg_env: Env) -> None:
    wg, private = wg_env.wg, PrivateKey(bytes([7]) * 32)
    wg.configure("wg0", DeviceConfig(peers=(PeerConfig(private.public_key()), PeerConfig(key(1)))))
    wg.configure("wg0", DeviceConfig(private_key=private))
    assert set(wg.device("wg0").peers) == {key(1)}
    wg.configure("wg0", DeviceConfig(peers=(PeerConfig(private.public_key()),)))
    assert set(wg.device("wg0").peers) == {key(1)}


def test_out_of_range_values_are_rejected_atomically(wg_env: Env) -> None:
    wg = wg_env.wg
    for config in (
        DeviceConfig(listen_port=70000, peers=(PeerConfig(key(1)),)),
        DeviceConfig(fwmark=-1),
        DeviceConfig(peers=(PeerConfig(key(1)), PeerConfig(key(2), persistent_keepalive=70000))),
        DeviceConfig(peers=(PeerConfig(key(1), endpoint=Endpoint(ip("1.2.3.4"), 70000)),)),
    ):
        with pytest.raises(KernelError) as caught:
            wg.configure("wg0", config)
        assert caught.value.errno == errno.EINVAL
    assert wg.device("wg0").peers == {}
    assert wg_env.kernel.counters.wg_configure == 0


def test_configure_or_read_a_missing_device_is_not_found(wg_env: Env) -> None:
    wg_env.kernel.add_link("eth0", up=True)
    for name in ("nope", "eth0"):
        with pytest.raises(NotFound):
            wg_env.wg.configure(name, DeviceConfig(listen_port=1))
        with pytest.raises(NotFound):
            wg_env.wg.device(name)


def test_device_is_a_snapshot(wg_env: Env) -> None:
    wg_env.wg.configure("wg0", DeviceConfig(peers=(PeerConfig(key(1)),)))
    device = wg_env.wg.device("wg0")
    device.peers.clear()
    assert set(wg_env.kernel.device("wg0").peers) == {key(1)}


# ---- invariants --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        DeviceConfig(peers=(PeerConfig(key(1)), PeerConfig(key(1), endpoint=None))),
        DeviceConfig(peers=(PeerConfig(Key.zero()),)),
        DeviceConfig(peers=(PeerConfig(key(9), update_only=True),)),
        DeviceConfig(peers=(PeerConfig(key(9), remove=True),)),
        # after replace_peers, no peer exists any more
        DeviceConfig(replace_peers=True, peers=(PeerConfig(key(1), update_only=True),)),
    ],
    ids=["twice", "zero-key", "update-missing", "remove-missing", "update-after-replace"],
)
def test_invariant_violations_change_nothing(wg_env: Env, config: DeviceConfig) -> None:
    wg_env.wg.configure("wg0", DeviceConfig(peers=(PeerConfig(key(1)),)))
    before = wg_env.kernel.device("wg0")
    with pytest.raises(InvariantViolation):
        wg_env.wg.configure("wg0", config)
    assert wg_env.kernel.device("wg0") == before
    assert wg_env.kernel.counters.wg_configure == 1


def test_invariant_violation_cannot_be_swallowed_as_a_meshcrypt_error() -> None:
    assert issubclass(InvariantViolation, AssertionError)
    assert not issubclass(InvariantViolation, MeshcryptError)


def test_without_invariants_unknown_peers_are_skipped_like_wireguard_go() -> None:
    env = make_env(immediate_link_up=True, enforce_invariants=False)
    env.kernel.add_link("wg0", kind="wireguard", up=True)
    env.wg.configure(
        "wg0",
        DeviceConfig(peers=(PeerConfig(key(1), remove=True), PeerConfig(key(2), update_only=True))),
    )
    assert env.wg.device("wg0").peers == {}
    with pytest.raises(InvariantViolation):  # these two stay violations
        env.wg.configure("wg0", DeviceConfig(peers=(PeerConfig(Key.zero()),)))


# ---- WireGuard tamper helpers ------------------------------------------------------------------


def test_tamper_device_and_record_traffic(wg_env: Env) -> None:
    k, private = wg_env.kernel, PrivateKey.generate()
    peer = Peer(key(3), None, frozenset({net("10.4.0.0/26")}))
    k.tamper_device("wg0", private_key=private, listen_port=1010, fwmark=11, peers=[peer])
    device = k.device("wg0")
    assert (device.private_key, device.listen_port, device.fwmark) == (private.clamped(), 1010, 11)
    assert device.peers == {key(3): peer}
    k.tamper_device("wg0", listen_port=1011)
    assert k.device("wg0").private_key == private.clamped()
    assert KEEP is not None
    k.tamper_device("wg0", private_key=None)
    assert k.device("wg0").public_key is None
    k.record_traffic("wg0", key(3), rx_bytes=512, tx_bytes=100, handshake_at=1234.5)
    k.record_traffic("wg0", key(3), rx_bytes=512)
    stats = k.device("wg0").peers[key(3)]
    assert (stats.rx_bytes, stats.tx_bytes, stats.last_handshake) == (1024, 100, 1234.5)
    assert k.counters.wg_configure == 0


# ---- clients -----------------------------------------------------------------------------------


def test_factories_count_every_client_and_open_ones() -> None:
    k = FakeKernel()
    make_nl, make_wg = k.netlink_factory(), k.wireguard_factory()
    first, second = make_nl(), make_nl()
    make_wg()
    assert (k.counters.netlink_clients, k.counters.wireguard_clients) == (2, 1)
    assert (k.open_netlink_clients, k.open_wireguard_clients) == (2, 1)
    first.close()
    first.close()  # closing twice is harmless
    assert k.open_netlink_clients == 1
    assert second.link_by_name("lo") is not None


NETLINK_CALLS: dict[str, Callable[[FakeNetlink], object]] = {
    "link_by_name": lambda nl: nl.link_by_name("lo"),
    "link_add_wireguard": lambda nl: nl.link_add_wireguard("wg0", 0),
    "link_set_mtu": lambda nl: nl.link_set_mtu(1, 1500),
    "link_set_up": lambda nl: nl.link_set_up(1),
    "link_delete": lambda nl: nl.link_delete(1),
    "addresses": lambda nl: nl.addresses(1, V4),
    "address_add": lambda nl: nl.address_add(1, addr("10.0.0.1/32")),
    "address_delete": lambda nl: nl.address_delete(1, addr("10.0.0.1/32")),
    "routes": lambda nl: nl.routes(99, V4),
    "routes_replace": lambda nl: nl.routes_replace([throw_route("10.0.0.0/8")]),
    "routes_delete": lambda nl: nl.routes_delete([throw_route("10.0.0.0/8")]),
    "rules": lambda nl: nl.rules(V4),
    "rule_add": lambda nl: nl.rule_add(WG_RULE),
    "rule_delete": lambda nl: nl.rule_delete(WG_RULE),
}


def test_every_netlink_method_is_covered() -> None:
    methods = {m for m in vars(FakeNetlink) if not m.startswith("_")} - {"close", "closed"}
    assert methods == set(NETLINK_CALLS)


@pytest.mark.parametrize("name", sorted(NETLINK_CALLS))
def test_closed_netlink_client_is_a_caller_bug(name: str) -> None:
    k = FakeKernel()
    nl = k.new_netlink_client()
    nl.close()
    k.faults.fail_next(Op.RULE_ADD)  # a closed client fails before any fault is considered
    with pytest.raises(InvariantViolation):
        NETLINK_CALLS[name](nl)
    assert k.faults.fired() == 0


def test_closed_wireguard_client_is_a_caller_bug(wg_env: Env) -> None:
    wg_env.wg.close()
    with pytest.raises(InvariantViolation):
        wg_env.wg.device("wg0")
    with pytest.raises(InvariantViolation):
        wg_env.wg.configure("wg0", DeviceConfig(listen_port=1))
    assert wg_env.kernel.device("wg0").listen_port == 0


# ---- faults ------------------------------------------------------------------------------------


@dataclass
class World:
    kernel: FakeKernel
    nl: FakeNetlink
    wg: FakeWireguard
    eth: int


def make_world() -> World:
    k = FakeKernel(immediate_link_up=True)
    k.add_link("wg0", kind="wireguard", up=True)
    eth = k.add_link("eth0", up=True).index
    nl, wg = k.new_netlink_client(), k.new_wireguard_client()
    nl.address_add(eth, addr("10.0.0.1/32"))
    nl.routes_replace([device_route("10.1.0.0/24", eth)])
    nl.rule_add(WG_RULE)
    wg.configure("wg0", DeviceConfig(peers=(PeerConfig(key(1)),)))
    return World(k, nl, wg, eth)


def state_of(k: FakeKernel) -> object:
    return (
        k.links(),
        {link.name: k.addresses_of(link.name) for link in k.links()},
        k.all_routes(),
        {f: k.rules_of(f) for f in IPFamily},
        k.device("wg0") if k.has_link("wg0") else None,
        dict(k.sysfs.values),
    )


FAULT_CALLS: dict[Op, Callable[[World], object]] = {
    Op.NEW_NETLINK_CLIENT: lambda w: w.kernel.new_netlink_client(),
    Op.LINK_BY_NAME: lambda w: w.nl.link_by_name("wg0"),
    Op.LINK_ADD: lambda w: w.nl.link_add_wireguard("wg1", 0),
    Op.LINK_DELETE: lambda w: w.nl.link_delete(w.eth),
    Op.LINK_SET_UP: lambda w: w.nl.link_set_up(w.eth),
    Op.LINK_SET_MTU: lambda w: w.nl.link_set_mtu(w.eth, 1400),
    Op.ADDRESS_LIST: lambda w: w.nl.addresses(w.eth, V4),
    Op.ADDRESS_ADD: lambda w: w.nl.address_add(w.eth, addr("10.0.0.2/32")),
    Op.ADDRESS_DELETE: lambda w: w.nl.address_delete(w.eth, addr("10.0.0.1/32")),
    Op.ROUTE_LIST: lambda w: w.nl.routes(99, V4),
    Op.ROUTE_REPLACE: lambda w: w.nl.routes_replace([throw_route("10.2.0.0/24")]),
    Op.ROUTE_DELETE: lambda w: w.nl.routes_delete([device_route("10.1.0.0/24", w.eth)]),
    Op.RULE_LIST: lambda w: w.nl.rules(V4),
    Op.RULE_ADD: lambda w: w.nl.rule_add(Rule(V4, 97, 99, 10, 10, True)),
    Op.RULE_DELETE: lambda w: w.nl.rule_delete(WG_RULE),
    Op.NEW_WIREGUARD_CLIENT: lambda w: w.kernel.new_wireguard_client(),
    Op.WG_CONFIGURE: lambda w: w.wg.configure("wg0", DeviceConfig(listen_port=1000)),
    Op.WG_DEVICE: lambda w: w.wg.device("wg0"),
    Op.SYSFS_WRITE: lambda w: w.kernel.sysfs.write("/sys/class/net/wg0/threaded", "1"),
}


def test_every_operation_can_fail() -> None:
    assert set(FAULT_CALLS) == set(Op)


@pytest.mark.parametrize("op", list(Op), ids=lambda op: op.name)
def test_one_shot_fault_fails_once_and_changes_nothing(op: Op) -> None:
    w = make_world()
    call = FAULT_CALLS[op]
    before_state, before_counts = state_of(w.kernel), w.kernel.counters
    w.kernel.faults.fail_next(op)
    with pytest.raises(KernelError) as caught:
        call(w)
    assert caught.value.errno == errno.EIO
    assert type(caught.value) is KernelError
    assert state_of(w.kernel) == before_state
    # A failed client creation still counts as an attempt; nothing else is counted.
    attempts = {
        Op.NEW_NETLINK_CLIENT: {"netlink_clients": 1},
        Op.NEW_WIREGUARD_CLIENT: {"wireguard_clients": 1},
    }
    assert (w.kernel.counters - before_counts).nonzero() == attempts.get(op, {})
    assert (w.kernel.faults.fired(op), w.kernel.faults.fired()) == (1, 1)
    assert not w.kernel.faults.armed(op)
    call(w)
    assert w.kernel.faults.fired(op) == 1


@pytest.mark.parametrize("op", [Op.ROUTE_REPLACE, Op.WG_DEVICE, Op.NEW_NETLINK_CLIENT])
def test_persistent_fault_fails_until_cleared(op: Op) -> None:
    w = make_world()
    w.kernel.faults.fail_next(op, persistent=True)
    for _ in range(3):
        with pytest.raises(KernelError):
            FAULT_CALLS[op](w)
    assert w.kernel.faults.fired(op) == 3
    w.kernel.faults.clear(op)
    FAULT_CALLS[op](w)
    assert w.kernel.faults.fired(op) == 3


def test_custom_errors_queue_in_order_and_clear_all() -> None:
    w = make_world()
    faults = w.kernel.faults
    faults.fail_next(Op.LINK_ADD, NotSupported("operation not supported", errno.EOPNOTSUPP))
    faults.fail_next(Op.LINK_ADD)
    with pytest.raises(NotSupported):
        w.nl.link_add_wireguard("wg1", 0)
    with pytest.raises(KernelError) as caught:
        w.nl.link_add_wireguard("wg1", 0)
    assert caught.value.errno == errno.EIO
    w.nl.link_add_wireguard("wg1", 0)
    faults.fail_next(Op.RULE_LIST)
    faults.fail_next(Op.WG_DEVICE, persistent=True)
    faults.clear()
    assert not faults.armed(Op.RULE_LIST)
    w.nl.rules(V4)
    w.wg.device("wg0")
    assert faults.fired() == 2


# ---- counters ----------------------------------------------------------------------------------


def test_counters_diff() -> None:
    a = Counters(route_add=3, rule_add=1)
    b = Counters(route_add=1, rule_add=1, link_add=1)
    assert (a - b) == Counters(route_add=2, link_add=-1)
    assert (a - b).nonzero() == {"route_add": 2, "link_add": -1}


def test_every_operation_is_counted(up_env: Env) -> None:
    k, nl, wg = up_env.kernel, up_env.nl, up_env.wg
    start = k.counters
    nl.link_add_wireguard("wg0", 0)
    index = k.link("wg0").index
    nl.link_set_mtu(index, 1400)
    nl.link_set_up(index)
    nl.address_add(index, addr("10.0.0.1/32"))
    nl.address_delete(index, addr("10.0.0.1/32"))
    nl.routes_replace([throw_route("10.1.0.0/24")])
    nl.routes_replace([device_route("10.1.0.0/24", index)])
    nl.routes_delete([device_route("10.1.0.0/24", index)])
    nl.rule_add(WG_RULE)
    nl.rule_delete(WG_RULE)
    wg.configure("wg0", DeviceConfig())
    nl.link_delete(index)
    k.new_netlink_client()
    k.new_wireguard_client()
    # Reads count nothing.
    nl.routes(99, V4)
    nl.rules(V4)
    nl.addresses(1, V4)
    nl.link_by_name("lo")
    assert (k.counters - start) == Counters(*([1] * 14))


# ---- sysfs -------------------------------------------------------------------------------------


def test_sysfs_records_writes_and_refuses_prefixes() -> None:
    sysfs = FakeSysfs(refuse_prefixes=["/sys/class/net/"])
    sysfs.write("/proc/sys/net/ipv4/conf/all/src_valid_mark", "1")
    assert sysfs.read("/proc/sys/net/ipv4/conf/all/src_valid_mark") == "1"
    with pytest.raises(NotSupported):
        sysfs.write("/sys/class/net/wg0/threaded", "1")
    assert sysfs.read("/sys/class/net/wg0/threaded") is None
    sysfs.allow("/sys/class/net/")
    sysfs.write("/sys/class/net/wg0/threaded", "1")
    assert sysfs.write_count == 3
    assert sysfs.calls[1] == ("/sys/class/net/wg0/threaded", "1")
    with pytest.raises(InvariantViolation):
        sysfs.write("/etc/passwd", "x")


def test_kernel_sysfs_knows_the_links_and_shares_faults(up_env: Env) -> None:
    k = up_env.kernel
    with pytest.raises(NotFound):
        k.sysfs.write("/sys/class/net/wg0/threaded", "1")
    k.add_link("wg0", kind="wireguard")
    k.sysfs.refuse("/sys/class/net/wg0/threaded")
    with pytest.raises(NotSupported):
        k.sysfs.write("/sys/class/net/wg0/threaded", "1")
    k.faults.fail_next(Op.SYSFS_WRITE)
    with pytest.raises(KernelError):
        k.sysfs.write("/proc/sys/net/ipv4/conf/all/src_valid_mark", "1")
    assert k.sysfs.values == {}
    assert k.sysfs.write_count == 3


# ---- clock -------------------------------------------------------------------------------------


def test_clock_moves_only_when_told() -> None:
    clock = FakeClock(monotonic_start=10.0, wall_start=1000.0)
    assert (clock.monotonic(), clock.monotonic(), clock.wall()) == (10.0, 10.0, 1000.0)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.wall()) == (12.5, 1002.5)
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_clock_auto_advance_per_read() -> None:
    clock = FakeClock(monotonic_start=0.0, wall_start=0.0, auto_advance=11.0)
    assert [clock.monotonic(), clock.monotonic(), clock.wall()] == [0.0, 11.0, 22.0]
    assert clock.reads == 3
