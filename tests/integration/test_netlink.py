"""`RtNetlink`, `LinkMonitor` and `open_in_netns` against the real kernel, in throwaway namespaces.

`ip` (iproute2) is the independent oracle: what the adapter programs is read back with `ip -j`, and
what `ip` programs is read back with the adapter. The kernel here has no dummy link type, so a veth
pair (v0 <-> v1, both in the namespace) stands in for the WireGuard device.

Run with `-s` to see the 5,000-route timings against `ip -batch`.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import secrets
import select
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from meshcrypt.adapters import netlink as netlink_module
from meshcrypt.adapters import rtnetlink
from meshcrypt.adapters.netlink import LinkEvent, LinkMonitor, RtNetlink
from meshcrypt.adapters.netns import entered_netns, open_in_netns
from meshcrypt.model.dataplane import InterfaceAddress, Link, Route, RouteKind, Rule
from meshcrypt.model.errors import (
    AlreadyExists,
    ConfigError,
    KernelError,
    NotFound,
    NotSupported,
)
from meshcrypt.model.net import CIDR, IPFamily

pytestmark = pytest.mark.integration

TABLE = 1
PROTO = 80
MARK = 0x100000
PRIO = 99


def ip(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def ip_json(netns: str, *args: str) -> Any:
    return json.loads(ip("-n", netns, "-j", *args) or "[]")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mc-nl-{secrets.token_hex(4)}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        ip("netns", "del", name)


@dataclass(frozen=True)
class Veth:
    netns: str
    name: str
    index: int
    peer: str


@pytest.fixture
def veth(netns: str) -> Veth:
    """v0 <-> v1, both up; no IPv6 link-local addresses (like a WireGuard device)."""
    ip("-n", netns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    for name in ("v0", "v1"):
        ip("-n", netns, "link", "set", name, "addrgenmode", "none")
        ip("-n", netns, "link", "set", name, "up")
    index = ip_json(netns, "link", "show", "dev", "v0")[0]["ifindex"]
    return Veth(netns, "v0", index, "v1")


@pytest.fixture
def nl(netns: str) -> Iterator[RtNetlink]:
    with RtNetlink(netns) as adapter:
        yield adapter


@dataclass(frozen=True)
class FamilyCase:
    family: IPFamily
    device_dst: CIDR
    throw_dst: CIDR
    other_dst: CIDR
    address: InterfaceAddress
    metric: int  # what meshcrypt programs: the kernel's default for the family

    def device(self, dst: CIDR, ifindex: int, metric: int | None = None) -> Route:
        m = self.metric if metric is None else metric
        return Route(TABLE, dst, RouteKind.DEVICE, ifindex, PROTO, m)

    def throw(self, dst: CIDR) -> Route:
        return Route(TABLE, dst, RouteKind.THROW, None, PROTO, self.metric)


CASES = [
    FamilyCase(
        IPFamily.V4,
        ipaddress.ip_network("10.65.1.0/26"),
        ipaddress.ip_network("10.65.2.0/26"),
        ipaddress.ip_network("10.65.3.7/32"),
        InterfaceAddress(ipaddress.ip_address("10.65.0.1"), 32),
        0,
    ),
    FamilyCase(
        IPFamily.V6,
        ipaddress.ip_network("fd00:65:1::/112"),
        ipaddress.ip_network("fd00:65:2::/112"),
        ipaddress.ip_network("fd00:65:3::7/128"),
        InterfaceAddress(ipaddress.ip_address("fd00:65::1"), 128),
        1024,
    ),
]


@pytest.fixture(params=CASES, ids=lambda c: c.family.label)
def case(request: pytest.FixtureRequest) -> FamilyCase:
    param: FamilyCase = request.param
    return param


def fam_flag(family: IPFamily) -> str:
    return "-4" if family is IPFamily.V4 else "-6"


def oracle_routes(netns: str, family: IPFamily, table: int = TABLE) -> set[tuple[Any, ...]]:
    """`ip -j route show table N` as (dst, kind, dev, protocol, metric, scope) tuples."""
    found = set()
    for entry in ip_json(netns, fam_flag(family), "route", "show", "table", str(table)):
        kind = RouteKind.THROW if entry.get("type") == "throw" else RouteKind.DEVICE
        dev = None if kind is RouteKind.THROW else entry.get("dev")
        found.add(
            (
                ipaddress.ip_network(entry["dst"]),
                kind,
                dev,
                int(entry["protocol"]),
                int(entry.get("metric", 0)),
                entry.get("scope", "global"),
            )
        )
    return found


def oracle_rules(netns: str, family: IPFamily) -> list[tuple[int, str, int, int, bool]]:
    """`ip -j rule show` as (priority, table, mark, mask, invert) tuples."""
    return [
        (
            entry["priority"],
            entry["table"],
            int(entry.get("fwmark", "0"), 16),
            int(entry.get("fwmask", "0"), 16),
            "not" in entry,
        )
        for entry in ip_json(netns, fam_flag(family), "rule", "show")
    ]


# ---- namespaces -------------------------------------------------------------------------------------


def test_missing_netns_is_not_found_and_never_created() -> None:
    name = f"mc-nl-missing-{secrets.token_hex(4)}"
    with pytest.raises(NotFound, match=name):
        RtNetlink(name)
    assert not os.path.exists(f"/run/netns/{name}")


@pytest.mark.parametrize("name", ["", "..", "a/b"])
def test_netns_name_that_escapes_run_netns_is_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        open_in_netns(name)


def test_open_in_netns_returns_the_thread_to_its_namespace(netns: str) -> None:
    before = os.readlink("/proc/thread-self/ns/net")
    with entered_netns(netns):
        inside = os.readlink("/proc/thread-self/ns/net")
    sock = open_in_netns(netns)
    sock.close()
    assert inside != before
    assert os.readlink("/proc/thread-self/ns/net") == before


def test_socket_sees_the_namespace_it_was_opened_in(netns: str, nl: RtNetlink) -> None:
    name = f"mcnl{secrets.token_hex(4)}"
    ip("-n", netns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    assert nl.link_by_name(name) is not None
    with RtNetlink() as here:  # the test's own namespace
        assert here.link_by_name(name) is None


# ---- links --------------------------------------------------------------------------------------------


def test_link_by_name_reports_kind_mtu_and_state(veth: Veth, nl: RtNetlink) -> None:
    link = nl.link_by_name(veth.name)
    assert link == Link(veth.name, veth.index, "veth", 1500, admin_up=True, oper_up=True)
    lo = nl.link_by_name("lo")
    assert lo is not None and lo.index == 1 and lo.kind == ""


def test_link_whose_peer_is_down_is_admin_up_but_not_oper_up(veth: Veth, nl: RtNetlink) -> None:
    ip("-n", veth.netns, "link", "set", veth.peer, "down")
    assert ip_json(veth.netns, "link", "show", "dev", veth.name)[0]["operstate"] == "LOWERLAYERDOWN"
    link = nl.link_by_name(veth.name)
    assert link is not None and link.admin_up and not link.oper_up


def test_link_by_name_of_a_missing_link_is_none(nl: RtNetlink) -> None:
    assert nl.link_by_name("nothere0") is None
    assert nl.link_by_name("x" * 16) is None  # longer than any link name can be
    assert nl.link_by_name("") is None


def test_a_reply_that_never_comes_times_out(netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlink_module, "REPLY_TIMEOUT_S", 1)
    with RtNetlink(netns) as nl:
        start = time.monotonic()
        with pytest.raises(KernelError) as failed:
            nl._recv("wait for nothing")
        assert failed.value.errno == errno.ETIMEDOUT
        assert 0.5 < time.monotonic() - start < 5
        assert nl.link_by_name("lo") is not None  # still usable


def test_link_set_mtu_and_up(netns: str, nl: RtNetlink) -> None:
    ip("-n", netns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    link = nl.link_by_name("v0")
    assert link is not None and not link.admin_up and not link.oper_up
    nl.link_set_mtu(link.index, 1420)
    nl.link_set_up(link.index)
    shown = ip_json(netns, "link", "show", "dev", "v0")[0]
    assert shown["mtu"] == 1420 and "UP" in shown["flags"]
    after = nl.link_by_name("v0")
    assert after is not None and after.mtu == 1420 and after.admin_up
    assert not after.oper_up  # v1 is still down: no carrier


def test_link_calls_on_a_missing_index_are_not_found(nl: RtNetlink) -> None:
    for call in (lambda: nl.link_set_mtu(9999, 1400), lambda: nl.link_set_up(9999)):
        with pytest.raises(NotFound, match="9999"):
            call()
    with pytest.raises(NotFound):
        nl.link_delete(9999)


def test_link_delete(veth: Veth, nl: RtNetlink) -> None:
    nl.link_delete(veth.index)
    assert nl.link_by_name(veth.name) is None
    assert nl.link_by_name(veth.peer) is None  # a veth goes with its peer
    assert ip_json(veth.netns, "link", "show", "type", "veth") == []


def test_link_add_wireguard(nl: RtNetlink) -> None:
    if not os.path.exists("/sys/module/wireguard"):
        with pytest.raises(NotSupported, match="wg-test"):
            nl.link_add_wireguard("wg-test", 1420)
        assert nl.link_by_name("wg-test") is None
        return
    nl.link_add_wireguard("wg-test", 1420)  # a kernel with the module
    link = nl.link_by_name("wg-test")
    assert link is not None and link.kind == "wireguard" and link.mtu == 1420


# ---- addresses ----------------------------------------------------------------------------------------


def test_addresses_add_list_delete(veth: Veth, nl: RtNetlink, case: FamilyCase) -> None:
    assert nl.addresses(veth.index, case.family) == []
    nl.address_add(veth.index, case.address)
    assert nl.addresses(veth.index, case.family) == [case.address]
    other = IPFamily.V6 if case.family is IPFamily.V4 else IPFamily.V4
    assert nl.addresses(veth.index, other) == []
    shown = ip_json(veth.netns, fam_flag(case.family), "addr", "show", "dev", veth.name)
    infos = [(a["local"], a["prefixlen"]) for a in shown[0]["addr_info"]]
    assert infos == [(str(case.address.address), case.address.prefixlen)]

    with pytest.raises(AlreadyExists):
        nl.address_add(veth.index, case.address)
    nl.address_delete(veth.index, case.address)
    assert nl.addresses(veth.index, case.family) == []
    with pytest.raises(KernelError) as failed:
        nl.address_delete(veth.index, case.address)
    assert failed.value.errno == errno.EADDRNOTAVAIL


def test_addresses_added_by_ip_are_listed(veth: Veth, nl: RtNetlink) -> None:
    ip("-n", veth.netns, "addr", "add", "192.0.2.1/24", "dev", veth.name)
    ip("-n", veth.netns, "addr", "add", "192.0.2.9/24", "dev", veth.peer)
    assert nl.addresses(veth.index, IPFamily.V4) == [
        InterfaceAddress(ipaddress.ip_address("192.0.2.1"), 24)
    ]


def test_addresses_of_a_missing_link_are_empty(nl: RtNetlink) -> None:
    assert nl.addresses(9999, IPFamily.V4) == []


# ---- routes -------------------------------------------------------------------------------------------


def test_device_and_throw_routes_round_trip(veth: Veth, nl: RtNetlink, case: FamilyCase) -> None:
    wanted = [case.device(case.device_dst, veth.index), case.throw(case.throw_dst)]
    nl.routes_replace(wanted)

    assert sorted(nl.routes(TABLE, case.family), key=str) == sorted(wanted, key=str)
    device_scope = "link" if case.family is IPFamily.V4 else "global"  # IPv6 has no route scopes
    assert oracle_routes(veth.netns, case.family) == {
        (case.device_dst, RouteKind.DEVICE, veth.name, PROTO, case.metric, device_scope),
        (case.throw_dst, RouteKind.THROW, None, PROTO, case.metric, "global"),
    }
    assert nl.routes(TABLE + 1, case.family) == []  # never created: empty, not an error
    assert all(r.table != TABLE for r in nl.routes(254, case.family))


def test_routes_filter_by_family_and_table(veth: Veth, nl: RtNetlink) -> None:
    ip("-n", veth.netns, "route", "add", "10.9.0.0/16", "dev", veth.name, "table", "7")
    ip("-n", veth.netns, "-6", "route", "add", "fd09::/64", "dev", veth.name, "table", str(TABLE))
    assert nl.routes(TABLE, IPFamily.V4) == []
    assert [str(r.dst) for r in nl.routes(7, IPFamily.V4)] == ["10.9.0.0/16"]
    assert [str(r.dst) for r in nl.routes(TABLE, IPFamily.V6)] == ["fd09::/64"]


def test_routes_of_a_big_table_id(veth: Veth, nl: RtNetlink) -> None:
    route = Route(100_000, ipaddress.ip_network("10.8.0.0/24"), RouteKind.DEVICE, veth.index, 80, 0)
    nl.routes_replace([route])
    assert nl.routes(100_000, IPFamily.V4) == [route]
    assert nl.routes(100_000 % 256, IPFamily.V4) == []


def test_replace_turns_a_throw_route_into_a_device_route_in_place(
    veth: Veth, nl: RtNetlink, case: FamilyCase
) -> None:
    nl.routes_replace([case.throw(case.device_dst)])
    nl.routes_replace([case.device(case.device_dst, veth.index)])
    assert nl.routes(TABLE, case.family) == [case.device(case.device_dst, veth.index)]
    (entry,) = oracle_routes(veth.netns, case.family)
    assert entry[1] is RouteKind.DEVICE and entry[2] == veth.name


def test_routes_with_another_metric_are_separate(
    veth: Veth, nl: RtNetlink, case: FamilyCase
) -> None:
    first = case.device(case.device_dst, veth.index, metric=case.metric + 10)
    second = case.device(case.device_dst, veth.index, metric=case.metric + 20)
    nl.routes_replace([first, second])
    assert sorted(r.metric for r in nl.routes(TABLE, case.family)) == [first.metric, second.metric]
    nl.routes_delete([first])
    assert nl.routes(TABLE, case.family) == [second]


def test_delete_ignores_scope_and_protocol_of_the_kernel_route(
    veth: Veth, nl: RtNetlink, case: FamilyCase
) -> None:
    """`ip route add` without proto/scope makes a `proto boot` route; deleting it with the route we
    would have programmed (proto 80) still works: the delete matches any scope and protocol."""
    ip("-n", veth.netns, "route", "add", str(case.device_dst), "dev", veth.name, "table", "1")
    ip("-n", veth.netns, "route", "add", "throw", str(case.throw_dst), "table", "1")
    kernel_routes = nl.routes(TABLE, case.family)
    assert {r.protocol for r in kernel_routes} == {3}  # RTPROT_BOOT
    nl.routes_delete([case.device(case.device_dst, veth.index), case.throw(case.throw_dst)])
    assert nl.routes(TABLE, case.family) == []
    assert oracle_routes(veth.netns, case.family) == set()


def test_delete_of_a_missing_route_is_quiet(veth: Veth, nl: RtNetlink, case: FamilyCase) -> None:
    nl.routes_delete([case.device(case.other_dst, veth.index), case.throw(case.throw_dst)])
    kept = case.device(case.device_dst, veth.index)
    nl.routes_replace([kept])
    nl.routes_delete([case.throw(case.throw_dst)])  # table exists now, route does not
    assert nl.routes(TABLE, case.family) == [kept]


def test_device_route_through_a_down_link_fails(veth: Veth, nl: RtNetlink) -> None:
    ip("-n", veth.netns, "link", "set", veth.name, "down")
    route = Route(TABLE, ipaddress.ip_network("10.7.0.0/24"), RouteKind.DEVICE, veth.index, 80, 0)
    with pytest.raises(KernelError, match=re.escape("10.7.0.0/24")) as failed:
        nl.routes_replace([route])
    assert failed.value.errno == errno.ENETDOWN


def test_routes_that_are_more_than_dev_x_have_no_ifindex(veth: Veth, nl: RtNetlink) -> None:
    """A gateway or multipath route must never look like the device route meshcrypt wants."""
    ns, dev = veth.netns, veth.name
    ip("-n", ns, "addr", "add", "192.0.2.1/24", "dev", dev)
    ip("-n", ns, "route", "add", "10.5.1.0/24", "via", "192.0.2.2", "dev", dev, "table", "1")
    ip("-n", ns, "route", "add", "10.5.2.0/24", "table", "1",
       "nexthop", "via", "192.0.2.2", "dev", dev, "nexthop", "via", "192.0.2.3", "dev", dev)  # fmt: skip
    ip("-n", ns, "route", "add", "throw", "10.5.3.0/24", "table", "1")
    ip("-n", ns, "route", "add", "blackhole", "10.5.4.0/24", "table", "1")
    found = {str(r.dst): (r.kind, r.ifindex) for r in nl.routes(TABLE, IPFamily.V4)}
    assert found == {
        "10.5.1.0/24": (RouteKind.DEVICE, None),
        "10.5.2.0/24": (RouteKind.DEVICE, None),
        "10.5.3.0/24": (RouteKind.THROW, None),
    }  # the blackhole route is not a kind meshcrypt knows: skipped
    nl.routes_delete(nl.routes(TABLE, IPFamily.V4))
    assert [e["type"] for e in ip_json(ns, "route", "show", "table", "1")] == ["blackhole"]


def host_routes(count: int, ifindex: int, table: int = TABLE) -> list[Route]:
    base = int(ipaddress.IPv4Address("10.128.0.0"))
    return [
        Route(table, ipaddress.IPv4Network((base + i, 32)), RouteKind.DEVICE, ifindex, PROTO, 0)
        for i in range(count)
    ]


def test_batch_of_5000_routes_and_delete(veth: Veth, nl: RtNetlink) -> None:
    routes = host_routes(5000, veth.index)
    nl.routes_replace(routes)
    assert set(nl.routes(TABLE, IPFamily.V4)) == set(routes)
    assert len(oracle_routes(veth.netns, IPFamily.V4)) == 5000
    nl.routes_replace(routes)  # again: replaces, no EEXIST
    assert len(nl.routes(TABLE, IPFamily.V4)) == 5000
    nl.routes_delete(routes)
    assert nl.routes(TABLE, IPFamily.V4) == []
    assert oracle_routes(veth.netns, IPFamily.V4) == set()


def test_failed_batch_names_the_route_and_leaves_the_socket_usable(veth: Veth, netns: str) -> None:
    routes = host_routes(40, veth.index)
    bad = Route(TABLE, ipaddress.ip_network("10.200.0.0/24"), RouteKind.DEVICE, 9999, PROTO, 0)
    batch = [*routes[:15], bad, *routes[15:]]
    with RtNetlink(netns, window=10) as nl:
        with pytest.raises(NotFound, match=re.escape("10.200.0.0/24")) as failed:
            nl.routes_replace(batch)
        assert failed.value.errno == errno.ENODEV
        # Windows 1 and 2 (which held the bad route) were applied; window 3 onwards was not sent.
        assert set(nl.routes(TABLE, IPFamily.V4)) == set(routes[:19])
        nl.routes_replace(routes)
        assert set(nl.routes(TABLE, IPFamily.V4)) == set(routes)


def test_failed_batch_counts_the_other_failures_of_its_window(veth: Veth, nl: RtNetlink) -> None:
    bad = [
        Route(TABLE, ipaddress.ip_network(f"10.201.{i}.0/24"), RouteKind.DEVICE, 9999, PROTO, 0)
        for i in range(3)
    ]
    with pytest.raises(NotFound, match=r"10\.201\.0\.0/24.*2 more failed"):
        nl.routes_replace(bad)


def test_a_dump_abandoned_half_way_does_not_break_the_next_call(
    veth: Veth, nl: RtNetlink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel refuses a new dump (EBUSY) while an unread one is pending on the socket."""
    routes = host_routes(3000, veth.index)  # a dump of many datagrams
    nl.routes_replace(routes)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("decoder bug")

    with monkeypatch.context() as patch:
        patch.setattr(rtnetlink, "decode_route", broken)
        with pytest.raises(RuntimeError, match="decoder bug"):
            nl.routes(TABLE, IPFamily.V4)
    assert nl.rules(IPFamily.V4)
    assert set(nl.routes(TABLE, IPFamily.V4)) == set(routes)


def test_error_text_is_found_whether_or_not_the_request_is_echoed(netns: str) -> None:
    """Without NETLINK_CAP_ACK the kernel echoes the whole request before the extended-ack text."""
    request = rtnetlink.message(
        rtnetlink.RTM_NEWLINK,
        rtnetlink.NLM_F_REQUEST | rtnetlink.NLM_F_ACK | rtnetlink.NLM_F_CREATE,
        7,
        rtnetlink.link_new_of_kind("mc-bogus", "no-such-kind", 0),
    )
    for capped in (False, True):
        with open_in_netns(netns) as sock:
            sock.setsockopt(rtnetlink.SOL_NETLINK, rtnetlink.NETLINK_EXT_ACK, 1)
            sock.setsockopt(rtnetlink.SOL_NETLINK, rtnetlink.NETLINK_CAP_ACK, int(capped))
            sock.bind((0, 0))
            sock.send(request)
            reply = sock.recv(65536)
        [(msg_type, flags, seq, start, end)] = list(rtnetlink.iter_messages(reply, len(reply)))
        assert (msg_type, seq, bool(flags & rtnetlink.NLM_F_CAPPED)) == (
            rtnetlink.NLMSG_ERROR,
            7,
            capped,
        )
        assert rtnetlink.decode_error(reply, start, end, flags) == (
            errno.EOPNOTSUPP,
            "Unknown device type",
        )


# ---- rules --------------------------------------------------------------------------------------------


def test_default_rules_are_listed(nl: RtNetlink, case: FamilyCase) -> None:
    expected = [Rule(case.family, 0, 255, 0, 0, False), Rule(case.family, 32766, 254, 0, 0, False)]
    if case.family is IPFamily.V4:
        expected.append(Rule(case.family, 32767, 253, 0, 0, False))
    assert nl.rules(case.family) == expected


def test_inverted_fwmark_rule_add_list_delete(netns: str, nl: RtNetlink, case: FamilyCase) -> None:
    rule = Rule(case.family, PRIO, TABLE, MARK, MARK, invert=True)
    nl.rule_add(rule)
    assert rule in nl.rules(case.family)
    assert (PRIO, "1", MARK, MARK, True) in oracle_rules(netns, case.family)
    other = IPFamily.V6 if case.family is IPFamily.V4 else IPFamily.V4
    assert all(r.priority != PRIO for r in nl.rules(other))

    with pytest.raises(AlreadyExists):
        nl.rule_add(rule)
    nl.rule_delete(rule)
    assert rule not in nl.rules(case.family)
    assert all(r[0] != PRIO for r in oracle_rules(netns, case.family))
    with pytest.raises(NotFound):
        nl.rule_delete(rule)


def test_rule_with_a_big_table_and_no_mark(netns: str, nl: RtNetlink) -> None:
    rule = Rule(IPFamily.V4, 500, 100_000, 0, 0, invert=False)
    nl.rule_add(rule)
    assert rule in nl.rules(IPFamily.V4)
    assert (500, "100000", 0, 0, False) in oracle_rules(netns, IPFamily.V4)


def test_rule_collision_with_a_non_inverted_rule(
    netns: str, nl: RtNetlink, case: FamilyCase
) -> None:
    """The kernel's duplicate check ignores the invert flag (and so does its delete)."""
    mark = f"{MARK:#x}/{MARK:#x}"
    ip("-n", netns, fam_flag(case.family), "rule", "add", "prio", str(PRIO), "fwmark", mark,
       "lookup", str(TABLE))  # fmt: skip
    foreign = Rule(case.family, PRIO, TABLE, MARK, MARK, invert=False)
    assert foreign in nl.rules(case.family)
    with pytest.raises(AlreadyExists):
        nl.rule_add(Rule(case.family, PRIO, TABLE, MARK, MARK, invert=True))
    nl.rule_delete(foreign)
    nl.rule_add(Rule(case.family, PRIO, TABLE, MARK, MARK, invert=True))
    assert (PRIO, "1", MARK, MARK, True) in oracle_rules(netns, case.family)


def test_rules_with_selectors_a_rule_cannot_hold_are_skipped(netns: str, nl: RtNetlink) -> None:
    ip("-n", netns, "rule", "add", "prio", "50", "from", "10.0.0.0/8", "lookup", "5")
    ip("-n", netns, "rule", "add", "prio", "51", "iif", "lo", "lookup", "5")
    ip("-n", netns, "rule", "add", "prio", "52", "lookup", "main", "suppress_prefixlength", "0")
    ip("-n", netns, "rule", "add", "prio", "53", "fwmark", "0x1", "lookup", "5")
    assert [r.priority for r in nl.rules(IPFamily.V4)] == [0, 53, 32766, 32767]
    assert Rule(IPFamily.V4, 53, 5, 1, 0xFFFFFFFF, False) in nl.rules(IPFamily.V4)


# ---- link monitor -------------------------------------------------------------------------------------


def wait_for(
    monitor: LinkMonitor, wanted: Callable[[LinkEvent], bool], timeout: float = 5.0
) -> LinkEvent:
    deadline = time.monotonic() + timeout
    seen: list[LinkEvent] = []
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([monitor], [], [], left)
        if readable:
            for event in monitor.read_events():
                seen.append(event)
                if wanted(event):
                    return event
    raise AssertionError(f"no matching link event within {timeout}s; saw {seen}")


def test_link_monitor_sees_down_up_and_delete(veth: Veth) -> None:
    with LinkMonitor(veth.netns) as monitor:
        assert monitor.read_events() == []  # non-blocking, nothing queued yet
        ip("-n", veth.netns, "link", "set", veth.name, "down")
        down = wait_for(monitor, lambda e: e.name == veth.name and not e.up)
        assert down == LinkEvent(veth.name, veth.index, up=False, present=True)
        ip("-n", veth.netns, "link", "set", veth.name, "up")
        up = wait_for(monitor, lambda e: e.name == veth.name and e.up)
        assert up == LinkEvent(veth.name, veth.index, up=True, present=True)
        ip("-n", veth.netns, "link", "del", veth.name)
        gone = wait_for(monitor, lambda e: e.name == veth.name and not e.present)
        assert gone == LinkEvent(veth.name, veth.index, up=False, present=False)


def test_link_monitor_only_sees_its_namespace(veth: Veth, netns: str) -> None:
    with LinkMonitor() as monitor:  # the test's own namespace
        ip("-n", netns, "link", "set", veth.name, "down")
        time.sleep(0.2)
        assert [e for e in monitor.read_events() if e.name == veth.name] == []


# ---- speed --------------------------------------------------------------------------------------------


def _median_ms(run: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def test_5000_routes_against_ip_batch(veth: Veth) -> None:
    """Times only (printed with -s); the assertions are about correctness, never about speed."""
    netns, dev = veth.netns, veth.name
    routes = host_routes(5000, veth.index)
    dsts = [str(r.dst.network_address) for r in routes]
    add = "".join(f"route replace {d}/32 dev {dev} table 1 proto 80 scope link\n" for d in dsts)
    delete = "".join(f"route del {d}/32 dev {dev} table 1\n" for d in dsts)
    results: dict[str, tuple[float, float]] = {}

    with RtNetlink(netns) as nl:

        def ours_add() -> None:
            nl.routes_replace(routes)

        def ours_dump() -> None:
            assert len(nl.routes(TABLE, IPFamily.V4)) == 5000

        def ours_cold_dump() -> None:
            with RtNetlink(netns) as fresh:  # nothing cached: every CIDR is built
                assert len(fresh.routes(TABLE, IPFamily.V4)) == 5000

        def ours_delete() -> None:
            nl.routes_delete(routes)
            assert nl.routes(TABLE, IPFamily.V4) == []

        def ip_add() -> None:
            ip("-n", netns, "-batch", "-", stdin=add)

        def ip_dump() -> None:
            assert ip("-n", netns, "route", "show", "table", "1").count("\n") == 5000

        def ip_delete() -> None:
            ip("-n", netns, "-batch", "-", stdin=delete)

        def cycle(adder: Callable[[], None], deleter: Callable[[], None]) -> None:
            adder()
            deleter()

        # Warm up both paths once, then measure each step on a table in the same state.
        cycle(ours_add, ours_delete)
        cycle(ip_add, ip_delete)
        steps = ("create", "replace", "dump", "cold dump", "delete")
        samples: dict[str, list[float]] = {k: [] for k in steps}
        theirs: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(3):
            samples["create"].append(_median_ms(ours_add, 1))
            samples["replace"].append(_median_ms(ours_add, 1))
            samples["dump"].append(_median_ms(ours_dump, 1))
            samples["cold dump"].append(_median_ms(ours_cold_dump, 1))
            samples["delete"].append(_median_ms(ours_delete, 1))
            theirs["create"].append(_median_ms(ip_add, 1))
            theirs["replace"].append(_median_ms(ip_add, 1))
            theirs["dump"].append(_median_ms(ip_dump, 1))
            theirs["cold dump"].append(theirs["dump"][-1])
            theirs["delete"].append(_median_ms(ip_delete, 1))
        for step, values in samples.items():
            results[step] = (statistics.median(values), statistics.median(theirs[step]))

    print("\n5,000 /32 device routes, table 1, median of 3 (ratio = adapter / ip):")
    for step, (mine, reference) in results.items():
        ref_name = "ip route show" if "dump" in step else "ip -batch"
        print(
            f"  {step:9s}  adapter {mine:6.1f} ms   {ref_name:13s} {reference:6.1f} ms"
            f"   ratio {mine / reference:4.2f}"
        )
