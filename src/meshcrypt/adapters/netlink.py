"""`RtNetlink`: the `ports.Netlink` port over a hand-rolled NETLINK_ROUTE socket; `LinkMonitor`.

Hand-rolled (stdlib `socket` + `struct`, codec in `rtnetlink`) rather than pyroute2 because route
programming speed is a target: pyroute2 spends ~0.33 ms encoding each route, this adapter about
one microsecond, so 5,000 routes go faster than `ip -batch` (see tests/integration/test_netlink.py).

How requests are made:

* every request carries NLM_F_ACK and a fresh sequence number; replies with another sequence
  number (left over from an interrupted call) are skipped;
* errors become `kernel_error(what was attempted, errno)` with the kernel's extended-ack text;
* dumps are read to NLMSG_DONE (multi-part) and restarted when the kernel flags them interrupted
  (NLM_F_DUMP_INTR: the table changed under the dump);
* route batches put many messages in one `send` and keep at most `window` outstanding; every ACK
  is read and checked, and the first failure is raised once its window is drained, so the socket
  is clean for the next call;
* an exchange abandoned half-way (an exception while reading) gets the socket replaced at the next
  call, since its unread replies would otherwise block new dumps (EBUSY).

Not thread-safe: one `RtNetlink` per thread (the agent has one loop that writes the dataplane).
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple, Self, TypeVar

from meshcrypt.adapters import rtnetlink as rt
from meshcrypt.adapters.netns import open_in_netns
from meshcrypt.model.dataplane import InterfaceAddress, Link, Route, RouteKind, Rule
from meshcrypt.model.errors import KernelError, NotFound, kernel_error
from meshcrypt.model.net import IPFamily

log = logging.getLogger(__name__)

T = TypeVar("T")
# Decodes one reply (receive buffer, payload start, message end); None skips it.
Decoder = Callable[[bytearray, int, int], T | None]

RCVBUF_BYTES = 8 * 1024 * 1024  # a 5,000-route dump or a burst of link events must not hit ENOBUFS
SNDBUF_BYTES = 1024 * 1024
RECV_CHUNK = 256 * 1024  # larger than any single datagram the kernel sends (dumps cap at 32 KiB)
DEFAULT_WINDOW = 256  # route messages outstanding per send
REPLY_TIMEOUT_S = 30  # the kernel answers synchronously; waiting longer means a bug, not load
DUMP_ATTEMPTS = 5
IFNAMSIZ = 16  # link names are at most 15 bytes
_SEQ_LIMIT = 2**32
_SO_SNDBUFFORCE = 32  # asm-generic/socket.h; the socket module does not export them
_SO_RCVBUFFORCE = 33

# A route that is already gone is what a delete wants.
_ROUTE_GONE = frozenset({errno.ESRCH, errno.ENOENT})


def _open_socket(netns: str | None, groups: int) -> socket.socket:
    """A bound NETLINK_ROUTE socket with big buffers and extended, capped ACKs."""
    if netns is None:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
    else:
        sock = open_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        _set_buffer(sock, socket.SO_RCVBUF, _SO_RCVBUFFORCE, RCVBUF_BYTES)
        _set_buffer(sock, socket.SO_SNDBUF, _SO_SNDBUFFORCE, SNDBUF_BYTES)
        # Optional kernel features (4.12+/4.20+): without them errors lose their text, ACKs echo
        # the request and dump filters are applied in Python only.
        for option in (rt.NETLINK_EXT_ACK, rt.NETLINK_CAP_ACK, rt.NETLINK_GET_STRICT_CHK):
            try:
                sock.setsockopt(rt.SOL_NETLINK, option, 1)
            except OSError as exc:
                log.debug("netlink socket option %d unavailable: %s", option, exc)
        sock.bind((0, groups))
    except OSError as exc:
        sock.close()
        raise kernel_error("open netlink socket", exc.errno or 0) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _set_buffer(sock: socket.socket, plain: int, force: int, size: int) -> None:
    """The *FORCE option passes the sysctl ceiling (needs CAP_NET_ADMIN); otherwise take what we get."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _describe_route(route: Route) -> str:
    via = "throw" if route.kind is RouteKind.THROW else f"dev index {route.ifindex}"
    return f"{route.dst} {via} table {route.table} metric {route.metric} proto {route.protocol}"


class _Interrupted(Exception):
    """A dump ended with NLM_F_DUMP_INTR set: its content may be inconsistent."""


class RtNetlink:
    """`ports.Netlink` for one network namespace (the current one, or `/run/netns/<netns>`)."""

    def __init__(self, netns: str | None = None, *, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._netns = netns
        self._where = f" in netns {netns}" if netns else ""
        self._window = window
        self._sock = self._connect()
        # True while an exchange is under way. Still True at the next call means the last one was
        # abandoned (an exception mid-read): its replies are still queued and, for a dump, the
        # kernel refuses any new dump with EBUSY until they are read. A fresh socket is simplest.
        self._dirty = False
        self._buf = bytearray(RECV_CHUNK)
        self._seq = 0
        self._cidrs = rt.CidrCache()

    def _connect(self) -> socket.socket:
        sock = _open_socket(self._netns, groups=0)
        # A kernel-side receive timeout (SO_RCVTIMEO) rather than `settimeout()`, which would poll()
        # before every one of the thousands of receives a route batch makes.
        timeout = struct.pack("@ll", REPLY_TIMEOUT_S, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        return sock

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- links ---------------------------------------------------------------------------------------

    def link_by_name(self, name: str) -> Link | None:
        """The link called `name`; None when there is none (or none could be: too long a name)."""
        if not name or len(name.encode()) >= IFNAMSIZ:
            return None  # the kernel would refuse the lookup itself with ERANGE
        body = rt.link_get_by_name(name)
        try:
            found = self._call(
                rt.RTM_GETLINK, 0, body, f"get link {name}", rt.RTM_NEWLINK, rt.decode_link
            )
        except NotFound:
            return None
        return found[0] if found else None

    def links(self) -> list[Link]:
        """Every link of the namespace in index order (`ports.LinkLister`)."""
        what = "list links"
        found = self._dump(
            rt.RTM_GETLINK, rt.link_dump_body(), what, rt.RTM_NEWLINK, rt.decode_link
        )
        return sorted(found, key=lambda link: link.index)

    def link_add_wireguard(self, name: str, mtu: int) -> None:
        body = rt.link_new_of_kind(name, "wireguard", mtu)
        flags = rt.NLM_F_CREATE | rt.NLM_F_EXCL
        self._call(rt.RTM_NEWLINK, flags, body, f"add wireguard link {name} (mtu {mtu})")

    def link_set_mtu(self, index: int, mtu: int) -> None:
        body = rt.ifinfomsg(index) + rt.attr_u32(rt.IFLA_MTU, mtu)
        self._call(rt.RTM_NEWLINK, 0, body, f"set mtu {mtu} on link index {index}")

    def link_set_up(self, index: int) -> None:
        body = rt.ifinfomsg(index, flags=rt.IFF_UP, change=rt.IFF_UP)
        self._call(rt.RTM_NEWLINK, 0, body, f"set link index {index} up")

    def link_delete(self, index: int) -> None:
        self._call(rt.RTM_DELLINK, 0, rt.ifinfomsg(index), f"delete link index {index}")

    # ---- addresses -----------------------------------------------------------------------------------

    def addresses(self, index: int, family: IPFamily) -> list[InterfaceAddress]:
        """The link's addresses of `family` (all scopes, link-local included); [] for a missing link."""

        def decode(buf: bytearray, start: int, end: int) -> InterfaceAddress | None:
            decoded = rt.decode_address(buf, start, end)
            if decoded is None or decoded[0] != index or decoded[1].address.version != family:
                return None
            return decoded[1]

        body = rt.IFADDRMSG.pack(family.af, 0, 0, 0, index)  # strict checking filters by index
        what = f"list {family.label} addresses of link index {index}"
        try:
            return self._dump(rt.RTM_GETADDR, body, what, rt.RTM_NEWADDR, decode)
        except NotFound:  # strict checking refuses a filter on a missing link with ENODEV
            return []

    def address_add(self, index: int, address: InterfaceAddress) -> None:
        body = rt.address_body(index, address)
        flags = rt.NLM_F_CREATE | rt.NLM_F_EXCL
        what = f"add address {address.address}/{address.prefixlen} to link index {index}"
        self._call(rt.RTM_NEWADDR, flags, body, what)

    def address_delete(self, index: int, address: InterfaceAddress) -> None:
        body = rt.address_body(index, address)
        what = f"delete address {address.address}/{address.prefixlen} from link index {index}"
        self._call(rt.RTM_DELADDR, 0, body, what)

    # ---- routes --------------------------------------------------------------------------------------

    def routes(self, table: int, family: IPFamily) -> list[Route]:
        # A partial, not a closure: one Python frame less for each of thousands of routes.
        decode = functools.partial(rt.decode_route, table=table, family=family, cidrs=self._cidrs)
        body = rt.route_dump_body(table, family)
        what = f"list {family.label} routes of table {table}"
        try:
            return self._dump(rt.RTM_GETROUTE, body, what, rt.RTM_NEWROUTE, decode)
        except NotFound:  # strict checking: a table that was never created is ENOENT
            return []

    def routes_replace(self, routes: Sequence[Route]) -> None:
        """Create or replace each route (keyed by table, dst, metric; the type may change in place)."""
        flags = rt.NLM_F_REQUEST | rt.NLM_F_ACK | rt.NLM_F_CREATE | rt.NLM_F_REPLACE
        self._route_batch(rt.RTM_NEWROUTE, flags, routes, "replace route", frozenset())

    def routes_delete(self, routes: Sequence[Route]) -> None:
        flags = rt.NLM_F_REQUEST | rt.NLM_F_ACK
        self._route_batch(rt.RTM_DELROUTE, flags, routes, "delete route", _ROUTE_GONE)

    # ---- rules ---------------------------------------------------------------------------------------

    def rules(self, family: IPFamily) -> list[Rule]:
        """The family's `[not] from all [fwmark M/M] lookup T` rules in kernel order (others skipped)."""
        decode = functools.partial(rt.decode_rule, family=family)
        body = rt.family_header(family, rt.FIB_RULE_HDR.size)
        what = f"list {family.label} rules"
        return self._dump(rt.RTM_GETRULE, body, what, rt.RTM_NEWRULE, decode)

    def rule_add(self, rule: Rule) -> None:
        """EEXIST (AlreadyExists) also when a rule differing only in the invert flag exists: the
        kernel's duplicate check ignores the flag."""
        flags = rt.NLM_F_CREATE | rt.NLM_F_EXCL
        self._call(rt.RTM_NEWRULE, flags, rt.rule_body(rule), f"add rule {rule}")

    def rule_delete(self, rule: Rule) -> None:
        """Sends every field; the kernel deletes the first rule matching priority, table, mark and
        mask whatever its invert flag (at most one such rule can exist, see `rule_add`)."""
        self._call(rt.RTM_DELRULE, 0, rt.rule_body(rule), f"delete rule {rule}")

    # ---- plumbing ------------------------------------------------------------------------------------

    def _next_seq(self, count: int = 1) -> int:
        """The first of `count` consecutive sequence numbers (never 0, which events use)."""
        if self._seq + count >= _SEQ_LIMIT:
            self._seq = 0
        first = self._seq + 1
        self._seq += count
        return first

    def _begin(self) -> None:
        """Start an exchange, on a fresh socket if the previous one was abandoned half-way."""
        if self._dirty:
            log.debug("netlink exchange abandoned earlier%s: reopening the socket", self._where)
            self._sock.close()
            self._sock = self._connect()
        self._dirty = True

    def _send(self, data: bytes, what: str) -> None:
        try:
            self._sock.send(data)
        except OSError as exc:
            raise kernel_error(f"{what}{self._where}: send", exc.errno or 0) from exc

    def _recv(self, what: str) -> int:
        try:
            return self._sock.recv_into(self._buf)
        except BlockingIOError as exc:  # EAGAIN: SO_RCVTIMEO expired
            raise kernel_error(f"{what}{self._where}: no reply", errno.ETIMEDOUT) from exc
        except OSError as exc:
            raise kernel_error(f"{what}{self._where}: receive", exc.errno or 0) from exc

    def _failure(self, what: str, err: int, text: str) -> KernelError:
        detail = f" ({text})" if text else ""
        return kernel_error(f"{what}{self._where}{detail}", err)

    def _call(
        self,
        msg_type: int,
        flags: int,
        body: bytes,
        what: str,
        reply_type: int = 0,
        decode: Decoder[T] | None = None,
    ) -> list[T]:
        """One request answered by an ACK or an error, and before it by zero or more replies of
        `reply_type`, each decoded with `decode`."""
        seq = self._next_seq()
        flags |= rt.NLM_F_REQUEST | rt.NLM_F_ACK
        self._begin()
        self._send(rt.message(msg_type, flags, seq, body), what)
        replies: list[T] = []
        buf = self._buf
        while True:
            size = self._recv(what)
            for got_type, got_flags, got_seq, start, end in rt.iter_messages(buf, size):
                if got_seq != seq:
                    continue
                if got_type == rt.NLMSG_ERROR:
                    self._dirty = False
                    err, text = rt.decode_error(buf, start, end, got_flags)
                    if err:
                        raise self._failure(what, err, text)
                    return replies
                if decode is not None and got_type == reply_type:
                    item = decode(buf, start, end)
                    if item is not None:
                        replies.append(item)

    def _dump(
        self, msg_type: int, body: bytes, what: str, reply_type: int, decode: Decoder[T]
    ) -> list[T]:
        """Every `reply_type` message of a dump, decoded (None results dropped)."""
        for attempt in range(1, DUMP_ATTEMPTS + 1):
            try:
                return self._dump_once(msg_type, body, what, reply_type, decode)
            except _Interrupted:
                log.debug("%s: dump interrupted by a change, attempt %d", what, attempt)
        raise kernel_error(f"{what}{self._where}: kept changing during the dump", errno.EINTR)

    def _dump_once(
        self, msg_type: int, body: bytes, what: str, reply_type: int, decode: Decoder[T]
    ) -> list[T]:
        seq = self._next_seq()
        flags = rt.NLM_F_REQUEST | rt.NLM_F_ACK | rt.NLM_F_DUMP
        self._begin()
        self._send(rt.message(msg_type, flags, seq, body), what)
        items: list[T] = []
        append = items.append
        buf = self._buf
        interrupted = False
        while True:
            size = self._recv(what)
            for got_type, got_flags, got_seq, start, end in rt.iter_messages(buf, size):
                if got_seq != seq:
                    continue
                if got_flags & rt.NLM_F_DUMP_INTR:  # also set on NLMSG_DONE
                    interrupted = True
                if got_type == reply_type:
                    item = decode(buf, start, end)
                    if item is not None:
                        append(item)
                elif got_type == rt.NLMSG_DONE:
                    self._dirty = False
                    err = rt.decode_done(buf, start, end)
                    if err:
                        raise self._failure(what, err, "")
                    if interrupted:
                        raise _Interrupted
                    return items
                elif got_type == rt.NLMSG_ERROR:  # the request itself was refused
                    self._dirty = False
                    err, text = rt.decode_error(buf, start, end, got_flags)
                    raise self._failure(what, err or errno.EPROTO, text)

    def _route_batch(
        self, msg_type: int, flags: int, routes: Sequence[Route], what: str, quiet: frozenset[int]
    ) -> None:
        delete = msg_type == rt.RTM_DELROUTE
        cidrs = None if delete else self._cidrs
        encode = rt.route_message
        window = self._window
        for first in range(0, len(routes), window):
            chunk = routes[first : first + window]
            base = self._next_seq(len(chunk))
            data = b"".join(
                encode(msg_type, flags, base + i, route, delete=delete, cidrs=cidrs)
                for i, route in enumerate(chunk)
            )
            self._begin()
            self._send(data, f"{what} ×{len(chunk)}")
            failures = self._collect_acks(base, len(chunk), what, quiet)
            self._dirty = False
            if failures:
                index, err, text = failures[0]
                more = (
                    f"; {len(failures) - 1} more failed in the same batch"
                    if len(failures) > 1
                    else ""
                )
                raise self._failure(f"{what} {_describe_route(chunk[index])}{more}", err, text)
        if routes:
            log.debug("%s: %d routes%s", what, len(routes), self._where)

    def _collect_acks(
        self, base: int, count: int, what: str, quiet: frozenset[int]
    ) -> list[tuple[int, int, str]]:
        """Read the ACK of each of `count` messages numbered from `base`; (position, errno, text)
        of every failure not in `quiet`, in order."""
        pending = count
        failures: list[tuple[int, int, str]] = []
        while pending:
            size = self._recv(what)
            for reply_type, reply_flags, reply_seq, start, end in rt.iter_messages(self._buf, size):
                position = reply_seq - base
                if reply_type != rt.NLMSG_ERROR or not 0 <= position < count:
                    continue
                pending -= 1
                err, text = rt.decode_error(self._buf, start, end, reply_flags)
                if err and err not in quiet:
                    failures.append((position, err, text))
        return failures


class LinkEvent(NamedTuple):
    """A link appeared, changed or went away: `(name, ifindex, up, present)`. `up` is the
    operational state (IFF_RUNNING, as `Link.oper_up`); a deleted link has `present` and `up` False.
    (The field is `ifindex` because a tuple's `index` is a method.)"""

    name: str
    ifindex: int
    up: bool
    present: bool


class LinkMonitor:
    """Link events of one namespace, for `loop.add_reader(monitor.fileno(), ...)`.

    The socket is non-blocking; `read_events()` returns whatever is queued (possibly nothing). If the
    kernel had to drop events because nobody read them (ENOBUFS), `read_events()` raises
    `KernelError` with errno ENOBUFS: the caller must re-read the links it cares about.
    """

    def __init__(self, netns: str | None = None) -> None:
        self._where = f" in netns {netns}" if netns else ""
        self._sock = _open_socket(netns, groups=rt.RTMGRP_LINK)
        self._sock.setblocking(False)
        self._buf = bytearray(RECV_CHUNK)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_events(self) -> list[LinkEvent]:
        events: list[LinkEvent] = []
        while True:
            try:
                size = self._sock.recv_into(self._buf)
            except BlockingIOError:
                return events
            except OSError as exc:
                raise kernel_error(f"read link events{self._where}", exc.errno or 0) from exc
            for msg_type, _flags, _seq, start, end in rt.iter_messages(self._buf, size):
                if msg_type in (rt.RTM_NEWLINK, rt.RTM_DELLINK):
                    link = rt.decode_link(self._buf, start, end)
                    present = msg_type == rt.RTM_NEWLINK
                    up = present and link.oper_up
                    events.append(LinkEvent(link.name, link.index, up, present))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
