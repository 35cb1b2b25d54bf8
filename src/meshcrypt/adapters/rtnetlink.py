"""The rtnetlink wire format: encode requests and decode replies, no I/O.

Written from the kernel's uapi headers (`linux/netlink.h`, `linux/rtnetlink.h`, `linux/if_link.h`,
`linux/if_addr.h`, `linux/fib_rules.h`) and rtnetlink(7). All integers are in host byte order
(netlink is a local protocol); addresses are in network byte order.

A message is `nlmsghdr` (16 bytes) + a family header (`ifinfomsg`, `ifaddrmsg`, `rtmsg`,
`fib_rule_hdr`) + attributes (`rtattr`: u16 length, u16 type, payload, padded to 4 bytes).

Decoders read straight out of the caller's receive buffer (which is reused by the next receive),
so they return immutable values only, never views into the buffer.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator
from typing import TypeAlias

from meshcrypt.model.dataplane import InterfaceAddress, Link, Route, RouteKind, Rule
from meshcrypt.model.errors import KernelError
from meshcrypt.model.net import CIDR, IPAddress, IPFamily, cidr_from_int

Buffer: TypeAlias = bytes | bytearray | memoryview

# ---- netlink(7) -------------------------------------------------------------------------------------

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH, on GET requests
NLM_F_REPLACE = 0x100  # on NEW requests
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: the request was not echoed back
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended-ack attributes follow

NLMSGERR_ATTR_MSG = 1

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12

NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

# ---- rtnetlink message types and multicast groups ------------------------------------------------------

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWRULE = 32
RTM_DELRULE = 33
RTM_GETRULE = 34

RTMGRP_LINK = 0x1

# ---- links (if_link.h, if.h) ------------------------------------------------------------------------

IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINKINFO = 18
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3

IFF_UP = 0x1
IFF_RUNNING = 0x40

# ---- addresses (if_addr.h) --------------------------------------------------------------------------

IFA_ADDRESS = 1
IFA_LOCAL = 2

# ---- routes (rtnetlink.h) ---------------------------------------------------------------------------

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTA_VIA = 18
RTA_NH_ID = 30
# A unicast route carrying one of these is not a plain device route.
_NOT_DEVICE_ONLY = frozenset({RTA_GATEWAY, RTA_MULTIPATH, RTA_VIA, RTA_NH_ID})

RTN_UNICAST = 1
RTN_THROW = 9

RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255  # on delete: match any scope

RT_TABLE_UNSPEC = 0
RT_TABLE_COMPAT = 252  # what rtm_table says when the real table id (in RTA_TABLE) is >= 256

RTM_F_CLONED = 0x200

# ---- rules (fib_rules.h) ----------------------------------------------------------------------------

FRA_DST = 1
FRA_SRC = 2
FRA_IIFNAME = 3
FRA_GOTO = 4
FRA_PRIORITY = 6
FRA_FWMARK = 10
FRA_FLOW = 11
FRA_TUN_ID = 12
FRA_SUPPRESS_IFGROUP = 13
FRA_SUPPRESS_PREFIXLEN = 14
FRA_TABLE = 15
FRA_FWMASK = 16
FRA_OIFNAME = 17
FRA_L3MDEV = 19
FRA_UID_RANGE = 20
FRA_IP_PROTO = 22
FRA_SPORT_RANGE = 23
FRA_DPORT_RANGE = 24
FRA_DSCP = 25
FRA_FLOWLABEL = 26

_SUPPRESSORS = (FRA_SUPPRESS_PREFIXLEN, FRA_SUPPRESS_IFGROUP)
_UNSET_U32 = 0xFFFFFFFF

FR_ACT_TO_TBL = 1
FIB_RULE_INVERT = 0x2

# Attributes that narrow a rule beyond "from all fwmark M/M": a `Rule` cannot express them.
# (The suppressors are dumped on every rule, as -1 when unset: see `_SUPPRESSORS`.)
_RULE_SELECTORS = frozenset(
    {
        FRA_DST,
        FRA_SRC,
        FRA_IIFNAME,
        FRA_OIFNAME,
        FRA_FLOW,
        FRA_TUN_ID,
        FRA_L3MDEV,
        FRA_UID_RANGE,
        FRA_IP_PROTO,
        FRA_SPORT_RANGE,
        FRA_DPORT_RANGE,
        FRA_DSCP,
        FRA_FLOWLABEL,
    }
)

# ---- fixed layouts ----------------------------------------------------------------------------------

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
RTATTR = struct.Struct("=HH")  # len, type
_ATTR_U32 = struct.Struct("=HHI")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
# rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTMSG = struct.Struct("=BBBBBBBBI")
# fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags
FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")
_NL_RT = struct.Struct("=IHHIIBBBBBBBBI")  # nlmsghdr + rtmsg in one go (the hot path)
_NL_RT_SIZE = _NL_RT.size

NLMSGHDR_SIZE = NLMSGHDR.size
_ERR_HDR_SIZE = 4 + NLMSGHDR_SIZE  # struct nlmsgerr: int error; struct nlmsghdr msg

_FAMILY_OF_AF = {socket.AF_INET: IPFamily.V4, socket.AF_INET6: IPFamily.V6}
_DEVICE = RouteKind.DEVICE  # enum member lookups are slow enough to show in 5,000-route loops
_THROW = RouteKind.THROW


def align(length: int) -> int:
    return (length + 3) & ~3


# ---- encoding -----------------------------------------------------------------------------------------


def message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    """A whole netlink message; the port id is 0 (the kernel fills in ours)."""
    return NLMSGHDR.pack(NLMSGHDR_SIZE + len(body), msg_type, flags, seq, 0) + body


def attr(attr_type: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return RTATTR.pack(length, attr_type) + payload + bytes(-length % 4)


def attr_u32(attr_type: int, value: int) -> bytes:
    return _ATTR_U32.pack(8, attr_type, value)


def attr_str(attr_type: int, value: str) -> bytes:
    return attr(attr_type, value.encode() + b"\0")


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def link_get_by_name(name: str) -> bytes:
    """RTM_GETLINK body looking a link up by name, without the statistics blocks."""
    return (
        ifinfomsg() + attr_str(IFLA_IFNAME, name) + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    )


def link_dump_body() -> bytes:
    """RTM_GETLINK dump body for every link, without the statistics blocks."""
    return ifinfomsg() + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)


def link_new_of_kind(name: str, kind: str, mtu: int) -> bytes:
    """RTM_NEWLINK body creating link `name` of `kind` (mtu 0: the driver's default)."""
    body = ifinfomsg() + attr_str(IFLA_IFNAME, name)
    if mtu:
        body += attr_u32(IFLA_MTU, mtu)
    return body + attr(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, kind))


def address_body(index: int, address: InterfaceAddress) -> bytes:
    """RTM_NEWADDR / RTM_DELADDR body: IFA_LOCAL and IFA_ADDRESS both carry the address."""
    family = socket.AF_INET if address.address.version == 4 else socket.AF_INET6
    packed = address.address.packed
    return (
        IFADDRMSG.pack(family, address.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        + attr(IFA_LOCAL, packed)
        + attr(IFA_ADDRESS, packed)
    )


def route_message(
    msg_type: int,
    flags: int,
    seq: int,
    route: Route,
    *,
    delete: bool,
    cidrs: CidrCache | None = None,
) -> bytes:
    """RTM_NEWROUTE / RTM_DELROUTE for one route.

    New routes carry the scope that matches their type (link for device routes, universe for throw
    routes) and the route's protocol. Deletes match like `ip route del`: any scope (NOWHERE) and any
    protocol (0), but the type, table, dst, metric and interface when known. Sending the add-time
    scope/protocol instead would make the kernel refuse to delete a route whose scope or protocol
    differ (ESRCH), which is the pyroute2 trap. `cidrs` (if given) remembers the destination for
    the read-back.
    """
    dst = route.dst
    packed = dst.network_address.packed
    if cidrs is not None:
        cidrs.remember(dst, packed)
    af = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    table = route.table
    device = route.kind is _DEVICE
    rtype = RTN_UNICAST if device else RTN_THROW
    if delete:
        scope, protocol = RT_SCOPE_NOWHERE, 0
    else:
        scope = RT_SCOPE_LINK if device else RT_SCOPE_UNIVERSE
        protocol = route.protocol
    dst_attr = RTATTR.pack(4 + len(packed), RTA_DST) + packed
    tail = _ATTR_U32.pack(8, RTA_TABLE, table) + dst_attr
    if device and route.ifindex is not None:  # a throw route has no interface to match
        tail += _ATTR_U32.pack(8, RTA_OIF, route.ifindex)
    if route.metric:
        tail += _ATTR_U32.pack(8, RTA_PRIORITY, route.metric)
    head = _NL_RT.pack(
        _NL_RT_SIZE + len(tail),
        msg_type,
        flags,
        seq,
        0,
        af,
        dst.prefixlen,
        0,
        0,
        table if table < 256 else RT_TABLE_COMPAT,
        protocol,
        scope,
        rtype,
        0,
    )
    return head + tail


def route_dump_body(table: int, family: IPFamily) -> bytes:
    """RTM_GETROUTE dump body. With NETLINK_GET_STRICT_CHK the kernel filters by RTA_TABLE itself;
    without it the attribute is ignored and the caller's own filter does the work."""
    return RTMSG.pack(family.af, 0, 0, 0, 0, 0, 0, 0, 0) + attr_u32(RTA_TABLE, table)


def rule_body(rule: Rule) -> bytes:
    """RTM_NEWRULE / RTM_DELRULE body for `[not] from all fwmark M/M lookup T pref P`."""
    flags = FIB_RULE_INVERT if rule.invert else 0
    table = rule.table
    body = FIB_RULE_HDR.pack(
        rule.family.af,
        0,
        0,
        0,
        table if table < 256 else RT_TABLE_UNSPEC,
        0,
        0,
        FR_ACT_TO_TBL,
        flags,
    )
    body += attr_u32(FRA_PRIORITY, rule.priority) + attr_u32(FRA_TABLE, table)
    if rule.mark or rule.mask:
        body += attr_u32(FRA_FWMARK, rule.mark) + attr_u32(FRA_FWMASK, rule.mask)
    return body


def family_header(family: IPFamily | None, size: int) -> bytes:
    """A dump request's family header: the family byte, the rest zero (what strict checking wants)."""
    af = socket.AF_UNSPEC if family is None else family.af
    return bytes([af]) + bytes(size - 1)


# ---- decoding -----------------------------------------------------------------------------------------


def iter_messages(buf: Buffer, size: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, payload start, message end) for each message in `buf[:size]`."""
    offset = 0
    unpack = NLMSGHDR.unpack_from
    while offset + NLMSGHDR_SIZE <= size:
        length, msg_type, flags, seq, _pid = unpack(buf, offset)
        if length < NLMSGHDR_SIZE or offset + length > size:
            raise KernelError(
                f"malformed netlink message at offset {offset} (length {length} of {size})",
                errno.EPROTO,
            )
        yield msg_type, flags, seq, offset + NLMSGHDR_SIZE, offset + length
        offset += (length + 3) & ~3


def attrs(buf: Buffer, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (payload start, payload end) for the attributes in `buf[start:end]`."""
    found: dict[int, tuple[int, int]] = {}
    unpack = RTATTR.unpack_from
    while start + 4 <= end:
        length, attr_type = unpack(buf, start)
        if length < 4 or start + length > end:
            break
        found[attr_type & NLA_TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return found


def _u32(buf: Buffer, span: tuple[int, int] | None, default: int = 0) -> int:
    if span is None:
        return default
    value: int = _U32.unpack_from(buf, span[0])[0]
    return value


def _cstring(buf: Buffer, span: tuple[int, int] | None) -> str:
    if span is None:
        return ""
    raw = bytes(buf[span[0] : span[1]])
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def decode_error(buf: Buffer, start: int, end: int, flags: int) -> tuple[int, str]:
    """(positive errno or 0, the kernel's extended-ack message or "") of an NLMSG_ERROR."""
    err: int = _I32.unpack_from(buf, start)[0]
    text = ""
    if flags & NLM_F_ACK_TLVS and end - start >= _ERR_HDR_SIZE:
        tlvs = start + _ERR_HDR_SIZE
        if not flags & NLM_F_CAPPED:  # the whole request was echoed before the TLVs
            echoed_len: int = NLMSGHDR.unpack_from(buf, start + 4)[0]
            tlvs = start + 4 + align(echoed_len)
        text = _cstring(buf, attrs(buf, tlvs, end).get(NLMSGERR_ATTR_MSG))
    return -err, text


def decode_done(buf: Buffer, start: int, end: int) -> int:
    """The positive errno a dump ended with (0 for success); it rides in NLMSG_DONE's payload."""
    if end - start < 4:
        return 0
    err: int = _I32.unpack_from(buf, start)[0]
    return -err


def decode_link(buf: Buffer, start: int, end: int) -> Link:
    """An RTM_NEWLINK / RTM_DELLINK payload.

    `oper_up` is IFF_RUNNING: the kernel sets it exactly when the link is admin-up and its operstate
    is UP or UNKNOWN (`dev_get_flags()` uses `netif_oper_up()`), so it already folds IFLA_OPERSTATE
    in. TUN devices (wireguard-go) and kernel WireGuard report UNKNOWN when up, a veth whose peer is
    down reports LOWERLAYERDOWN — the first counts as up, the second does not.
    """
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(buf, start)
    found = attrs(buf, start + IFINFOMSG.size, end)
    kind = ""
    linkinfo = found.get(IFLA_LINKINFO)
    if linkinfo is not None:
        kind = _cstring(buf, attrs(buf, linkinfo[0], linkinfo[1]).get(IFLA_INFO_KIND))
    return Link(
        name=_cstring(buf, found.get(IFLA_IFNAME)),
        index=index,
        kind=kind,
        mtu=_u32(buf, found.get(IFLA_MTU)),
        admin_up=bool(flags & IFF_UP),
        oper_up=bool(flags & IFF_RUNNING),
    )


def _ip(raw: bytes) -> IPAddress:
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


def decode_address(buf: Buffer, start: int, end: int) -> tuple[int, InterfaceAddress] | None:
    """(ifindex, address) of an RTM_NEWADDR payload; IFA_LOCAL is the interface's own address
    (IFA_ADDRESS is the peer's on point-to-point IPv4 links), IPv6 only sends IFA_ADDRESS."""
    _family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(buf, start)
    found = attrs(buf, start + IFADDRMSG.size, end)
    span = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
    if span is None:
        return None
    return index, InterfaceAddress(_ip(bytes(buf[span[0] : span[1]])), prefixlen)


class CidrCache:
    """Interned CIDR values keyed by their wire form (raw address bytes, prefix length).

    Building an `ip_network` costs several microseconds, more than decoding the rest of a route; a
    table is dumped again and again with mostly the same destinations, so each is built once. The
    routes an adapter programs are remembered on the way out, so the read-back after a sync builds
    none. Bounded: past `limit` entries it starts afresh.
    """

    def __init__(self, limit: int = 65536) -> None:
        self._limit = limit
        self._known: dict[tuple[bytes, int], CIDR] = {}

    def __len__(self) -> int:
        return len(self._known)

    def get(self, raw: bytes, prefixlen: int) -> CIDR:
        key = (raw, prefixlen)
        cidr = self._known.get(key)
        if cidr is None:
            family = IPFamily.V4 if len(raw) == 4 else IPFamily.V6
            cidr = cidr_from_int(int.from_bytes(raw, "big"), prefixlen, family)
            self._store(key, cidr)
        return cidr

    def remember(self, cidr: CIDR, raw: bytes) -> None:
        key = (raw, cidr.prefixlen)
        if key not in self._known:
            self._store(key, cidr)

    def _store(self, key: tuple[bytes, int], cidr: CIDR) -> None:
        if len(self._known) >= self._limit:
            self._known.clear()
        self._known[key] = cidr


_DEFAULT_DST = {IPFamily.V4: bytes(4), IPFamily.V6: bytes(16)}


def decode_route(
    buf: Buffer, start: int, end: int, table: int, family: IPFamily, cidrs: CidrCache
) -> Route | None:
    """An RTM_NEWROUTE payload as a `Route`, or None when it is not a route of `table` and `family`
    that meshcrypt can represent.

    Kept: RTN_UNICAST as DEVICE and RTN_THROW as THROW. A device route's ifindex is RTA_OIF, but
    None when the route is more than "dev X" (a gateway, multipath, nexthop object): such a route
    never equals one meshcrypt wants, so a sync replaces or deletes it instead of taking it for
    its own. Throw routes are normalised to `ifindex=None`: the kernel reports IPv6 throw routes on
    `lo` (OIF 1), IPv4 ones without an interface. Skipped: every other type (local, broadcast,
    blackhole, unreachable, prohibit, ...) and cached clones, none of which meshcrypt programs.
    """
    af, dst_len, _src_len, _tos, rtm_table, protocol, _scope, rtype, rtm_flags = RTMSG.unpack_from(
        buf, start
    )
    if _FAMILY_OF_AF.get(af) is not family or rtm_flags & RTM_F_CLONED:
        return None
    if rtype not in (RTN_UNICAST, RTN_THROW):
        return None
    dst_raw = _DEFAULT_DST[family]
    oif: int | None = None
    device_only = True
    metric = 0
    found_table = rtm_table
    pos = start + RTMSG.size
    unpack_hdr = RTATTR.unpack_from
    unpack_u32 = _U32.unpack_from
    while pos + 4 <= end:
        length, attr_type = unpack_hdr(buf, pos)
        if length < 4:
            break
        if attr_type == RTA_TABLE:
            found_table = unpack_u32(buf, pos + 4)[0]
        elif attr_type == RTA_DST:
            dst_raw = bytes(buf[pos + 4 : pos + length])
        elif attr_type == RTA_OIF:
            oif = unpack_u32(buf, pos + 4)[0]
        elif attr_type == RTA_PRIORITY:
            metric = unpack_u32(buf, pos + 4)[0]
        elif attr_type in _NOT_DEVICE_ONLY:
            device_only = False
        pos += (length + 3) & ~3
    if found_table != table:
        return None
    dst = cidrs.get(dst_raw, dst_len)
    if rtype == RTN_THROW:
        return Route(table, dst, _THROW, None, protocol, metric)
    return Route(table, dst, _DEVICE, oif if device_only else None, protocol, metric)


def decode_rule(buf: Buffer, start: int, end: int, family: IPFamily) -> Rule | None:
    """An RTM_NEWRULE payload as a `Rule`, or None when the rule is not `[not] from all
    [fwmark M/M] lookup T`: other actions (goto, blackhole, ...) and rules with selectors a `Rule`
    cannot hold (source/destination prefixes, interfaces, tos, ports, uid ranges, ...).

    A missing FRA_FWMARK / FRA_FWMASK reads as 0 (the kernel omits both when neither is set).
    """
    af, dst_len, src_len, tos, hdr_table, _r1, _r2, action, flags = FIB_RULE_HDR.unpack_from(
        buf, start
    )
    if _FAMILY_OF_AF.get(af) is not family or action != FR_ACT_TO_TBL:
        return None
    if dst_len or src_len or tos:
        return None
    found = attrs(buf, start + FIB_RULE_HDR.size, end)
    if not _RULE_SELECTORS.isdisjoint(found):
        return None
    if any(_u32(buf, found.get(a), _UNSET_U32) != _UNSET_U32 for a in _SUPPRESSORS):
        return None
    return Rule(
        family=family,
        priority=_u32(buf, found.get(FRA_PRIORITY)),
        table=_u32(buf, found.get(FRA_TABLE), hdr_table),
        mark=_u32(buf, found.get(FRA_FWMARK)),
        mask=_u32(buf, found.get(FRA_FWMASK)),
        invert=bool(flags & FIB_RULE_INVERT),
    )
