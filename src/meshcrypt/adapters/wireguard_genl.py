"""Kernel WireGuard over generic netlink, written against the `linux/wireguard.h` protocol.

The module is in two halves:

* a pure codec (no sockets): `set_device_payloads` turns a `DeviceConfig` into one or more
  `WG_CMD_SET_DEVICE` payloads, each small enough for the kernel; `decode_device` reads one
  `WG_CMD_GET_DEVICE` / `WG_CMD_SET_DEVICE` payload; `merge_dump` and `merge_set_payloads` fold a
  sequence of them back into one `Device` / `DeviceConfig`;
* `GenlWireguard`, the `ports.WireguardDevices` adapter that sends those payloads on a
  `NETLINK_GENERIC` socket, optionally opened inside a named network namespace.

Why split a configuration: the peer list travels in one nested attribute whose length field is 16 bits,
so a single message cannot carry more than 64 KiB of peers. We keep every message under
`MAX_MESSAGE_SIZE` and send the rest in follow-up messages, as `wg setconf` does. Only the first
message may carry `WGDEVICE_F_REPLACE_PEERS` (a later one would delete the peers just added) and only
the first piece of a peer may carry `WGPEER_F_REPLACE_ALLOWEDIPS` (a later piece would drop the
allowed IPs of the earlier pieces).

Why merge a dump: the kernel fills each dump message until it is full and continues the current peer
in the next one, repeating its public key with the rest of its allowed IPs. Entries are merged by
public key, never counted per message.

A private key only ever travels inside the encoded bytes; no log line or error message carries one.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from meshcrypt.adapters.netns import open_in_netns
from meshcrypt.model.dataplane import Device, DeviceConfig, Endpoint, Peer, PeerConfig
from meshcrypt.model.errors import KernelError, NotFound, NotSupported, kernel_error
from meshcrypt.model.keys import KEY_LEN, Key, PrivateKey
from meshcrypt.model.net import CIDR

log = logging.getLogger(__name__)

# --- netlink and generic netlink constants (linux/netlink.h, linux/genetlink.h) -----------------

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: the echoed request was cut to its header
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLATTR = struct.Struct("=HH")  # len, type
_GENLHDR = struct.Struct("=BBH")  # cmd, version, reserved

# --- WireGuard (linux/wireguard.h) --------------------------------------------------------------

WG_GENL_NAME = "wireguard"
WG_GENL_VERSION = 1
WG_CMD_GET_DEVICE = 0
WG_CMD_SET_DEVICE = 1

WGDEVICE_F_REPLACE_PEERS = 1

WGDEVICE_A_IFINDEX = 1
WGDEVICE_A_IFNAME = 2
WGDEVICE_A_PRIVATE_KEY = 3
WGDEVICE_A_PUBLIC_KEY = 4
WGDEVICE_A_FLAGS = 5
WGDEVICE_A_LISTEN_PORT = 6
WGDEVICE_A_FWMARK = 7
WGDEVICE_A_PEERS = 8

WGPEER_F_REMOVE_ME = 1
WGPEER_F_REPLACE_ALLOWEDIPS = 2
WGPEER_F_UPDATE_ONLY = 4

WGPEER_A_PUBLIC_KEY = 1
WGPEER_A_PRESHARED_KEY = 2
WGPEER_A_FLAGS = 3
WGPEER_A_ENDPOINT = 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL = 5
WGPEER_A_LAST_HANDSHAKE_TIME = 6
WGPEER_A_RX_BYTES = 7
WGPEER_A_TX_BYTES = 8
WGPEER_A_ALLOWEDIPS = 9
WGPEER_A_PROTOCOL_VERSION = 10

WGALLOWEDIP_A_FAMILY = 1
WGALLOWEDIP_A_IPADDR = 2
WGALLOWEDIP_A_CIDR_MASK = 3

IFNAMSIZ = 16

MAX_MESSAGE_SIZE = 32 * 1024
"""Upper bound for one SET_DEVICE message, netlink header included (see the module docstring)."""

_SOCKADDR_IN = struct.Struct("=H2s4s8x")  # family (host order), port (network order), address
_SOCKADDR_IN6 = struct.Struct("=H2sI16sI")  # family, port, flowinfo, address, scope id
_TIMESPEC = struct.Struct("=qq")
_DUMP_ATTEMPTS = 3
_RECV_SIZE = 256 * 1024


# --- attribute encoding -------------------------------------------------------------------------


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + bytes(_align(length) - length)


def _nest(kind: int, parts: Sequence[bytes]) -> bytes:
    body = b"".join(parts)
    length = _NLATTR.size + len(body)
    if length > 0xFFFF:
        raise ValueError(f"nested attribute of {length} bytes overflows its 16-bit length")
    return _NLATTR.pack(length, kind | NLA_F_NESTED) + body


def _u16(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=H", value))


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _ifname(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"\0" in raw:
        raise ValueError(f"invalid interface name {name!r}")
    return _attr(WGDEVICE_A_IFNAME, raw + b"\0")


def encode_endpoint(endpoint: Endpoint) -> bytes:
    """A `sockaddr_in` / `sockaddr_in6` as the kernel expects in WGPEER_A_ENDPOINT."""
    port = struct.pack("!H", endpoint.port)
    if endpoint.ip.version == 4:
        return _SOCKADDR_IN.pack(socket.AF_INET, port, endpoint.ip.packed)
    return _SOCKADDR_IN6.pack(socket.AF_INET6, port, 0, endpoint.ip.packed, 0)


def decode_endpoint(raw: bytes) -> Endpoint | None:
    """The endpoint from a sockaddr, or None for an unset (all-zero) or unknown one."""
    if len(raw) < 2:
        return None
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET and len(raw) >= _SOCKADDR_IN.size:
        _, port, addr = _SOCKADDR_IN.unpack_from(raw)
        return Endpoint(ipaddress.IPv4Address(addr), struct.unpack("!H", port)[0])
    if family == socket.AF_INET6 and len(raw) >= _SOCKADDR_IN6.size:
        _, port, _, addr6, _ = _SOCKADDR_IN6.unpack_from(raw)
        return Endpoint(ipaddress.IPv6Address(addr6), struct.unpack("!H", port)[0])
    return None


def _allowed_ip(cidr: CIDR) -> bytes:
    family = socket.AF_INET if cidr.version == 4 else socket.AF_INET6
    return _nest(
        0,
        [
            _u16(WGALLOWEDIP_A_FAMILY, family),
            _attr(WGALLOWEDIP_A_IPADDR, cidr.network_address.packed),
            _attr(WGALLOWEDIP_A_CIDR_MASK, struct.pack("=B", cidr.prefixlen)),
        ],
    )


def _peer_flags(peer: PeerConfig, first_piece: bool) -> int:
    flags = 0
    if peer.remove:
        flags |= WGPEER_F_REMOVE_ME
    if peer.update_only:
        flags |= WGPEER_F_UPDATE_ONLY
    if peer.replace_allowed_ips and first_piece:
        flags |= WGPEER_F_REPLACE_ALLOWEDIPS
    return flags


def _peer_head(peer: PeerConfig, first_piece: bool) -> list[bytes]:
    """The attributes of a peer before its allowed IPs; continuation pieces carry only key and flags."""
    parts = [_attr(WGPEER_A_PUBLIC_KEY, peer.public_key.raw)]
    flags = _peer_flags(peer, first_piece)
    if flags:
        parts.append(_u32(WGPEER_A_FLAGS, flags))
    if first_piece:
        if peer.endpoint is not None:
            parts.append(_attr(WGPEER_A_ENDPOINT, encode_endpoint(peer.endpoint)))
        if peer.persistent_keepalive is not None:
            parts.append(_u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, peer.persistent_keepalive))
    return parts


def _peer_attr(head: Sequence[bytes], allowed: Sequence[bytes]) -> bytes:
    parts = list(head)
    if allowed:
        parts.append(_nest(WGPEER_A_ALLOWEDIPS, allowed))
    return _nest(0, parts)


def _device_head(name: str, config: DeviceConfig) -> list[bytes]:
    parts = [_ifname(name)]
    if config.private_key is not None:
        parts.append(_attr(WGDEVICE_A_PRIVATE_KEY, config.private_key.raw))
    if config.listen_port is not None:
        parts.append(_u16(WGDEVICE_A_LISTEN_PORT, config.listen_port))
    if config.fwmark is not None:
        parts.append(_u32(WGDEVICE_A_FWMARK, config.fwmark))
    if config.replace_peers:
        parts.append(_u32(WGDEVICE_A_FLAGS, WGDEVICE_F_REPLACE_PEERS))
    return parts


_NEST_OVERHEAD = _NLATTR.size


class _PayloadBuilder:
    """Packs peers into SET_DEVICE payloads, starting a new payload whenever one would overflow."""

    def __init__(self, name: str, config: DeviceConfig, max_size: int) -> None:
        self._genl = _GENLHDR.pack(WG_CMD_SET_DEVICE, WG_GENL_VERSION, 0)
        self._name = name
        self._budget = max_size - _NLMSGHDR.size
        self.payloads: list[bytes] = []
        self._head = b"".join(_device_head(name, config))
        self._peers: list[bytes] = []
        self._size = self._base_size()
        if self._size + _NEST_OVERHEAD > self._budget:
            raise ValueError(f"message limit {max_size} is too small for the device attributes")

    def _base_size(self) -> int:
        return len(self._genl) + len(self._head) + _NEST_OVERHEAD

    @property
    def room(self) -> int:
        return self._budget - self._size

    @property
    def capacity(self) -> int:
        """The room in an empty follow-up message."""
        return self._budget - (len(self._genl) + len(_ifname(self._name)) + _NEST_OVERHEAD)

    @property
    def empty(self) -> bool:
        return not self._peers

    def add(self, peer_attr: bytes) -> None:
        if len(peer_attr) > self.room:
            raise ValueError("peer attribute does not fit")  # the callers check room first
        self._peers.append(peer_attr)
        self._size += len(peer_attr)

    def flush(self) -> None:
        body = self._genl + self._head
        if self._peers:
            body += _nest(WGDEVICE_A_PEERS, self._peers)
        self.payloads.append(body)
        # Follow-up messages name the device and carry peers only: no key, port, mark or flags.
        self._head = _ifname(self._name)
        self._peers = []
        self._size = self._base_size()


def set_device_payloads(
    name: str, config: DeviceConfig, max_message_size: int = MAX_MESSAGE_SIZE
) -> list[bytes]:
    """Encode a configuration as generic-netlink payloads (genl header + attributes), in send order.

    Every payload plus its 16-byte netlink header stays within `max_message_size`. A peer that does
    not fit in the current message moves to the next one whole; only a peer too large for any message
    has its allowed IPs split over several (starting in the current one), its first piece carrying
    the settings and the REPLACE_ALLOWEDIPS flag.
    """
    builder = _PayloadBuilder(name, config, max_message_size)
    for peer in config.peers:
        head = _peer_head(peer, True)
        allowed = [_allowed_ip(c) for c in peer.allowed_ips]
        whole = _peer_size(head, allowed)
        if whole > builder.room and whole <= builder.capacity:
            builder.flush()  # keep a peer that fits one message in one message
        if whole <= builder.room:
            builder.add(_peer_attr(head, allowed))
        else:
            _add_split_peer(builder, peer, allowed)
    builder.flush()
    return builder.payloads


def _peer_size(head: Sequence[bytes], allowed: Sequence[bytes]) -> int:
    """The encoded size of `_peer_attr(head, allowed)`, without building it."""
    size = _NEST_OVERHEAD + sum(len(p) for p in head)
    if allowed:
        size += _NEST_OVERHEAD + sum(len(a) for a in allowed)
    return size


def _add_split_peer(builder: _PayloadBuilder, peer: PeerConfig, allowed: list[bytes]) -> None:
    first = True
    remaining = allowed
    while True:
        head = _peer_head(peer, first)
        overhead = sum(len(p) for p in head) + 2 * _NEST_OVERHEAD
        taken: list[bytes] = []
        space = builder.room - overhead
        for item in remaining:
            if len(item) > space:
                break
            taken.append(item)
            space -= len(item)
        if not taken and remaining:
            if builder.empty:
                raise ValueError("message limit too small for one allowed IP")
            builder.flush()
            continue
        builder.add(_peer_attr(head, taken))
        remaining = remaining[len(taken) :]
        first = False
        if not remaining:
            return
        builder.flush()


def frame(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    """Put a netlink header in front of a payload."""
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload


def get_device_payload(name: str) -> bytes:
    """The payload of a WG_CMD_GET_DEVICE dump request for one device."""
    return _GENLHDR.pack(WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0) + _ifname(name)


# --- decoding -----------------------------------------------------------------------------------


def iter_attrs(data: bytes | memoryview, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(type without flag bits, payload) for each attribute in `data[offset:]`."""
    view = memoryview(data)
    end = len(view)
    while offset + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(view, offset)
        if length < _NLATTR.size or offset + length > end:
            raise ValueError(f"malformed netlink attribute at offset {offset}")
        yield kind & NLA_TYPE_MASK, bytes(view[offset + _NLATTR.size : offset + length])
        offset += _align(length)


@dataclass(slots=True)
class PeerEntry:
    """One peer entry of one message, before merging."""

    public_key: Key
    flags: int = 0
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    last_handshake: float = 0.0
    rx_bytes: int = 0
    tx_bytes: int = 0
    allowed_ips: list[CIDR] = field(default_factory=list)
    has_allowed_ips: bool = False


@dataclass(slots=True)
class DeviceMessage:
    """The attributes of one GET_DEVICE or SET_DEVICE payload."""

    command: int
    ifname: str | None = None
    ifindex: int | None = None
    private_key: PrivateKey | None = None
    public_key: Key | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    flags: int = 0
    peers: list[PeerEntry] = field(default_factory=list)


def _decode_allowed_ip(data: bytes) -> CIDR:
    family = mask = None
    raw = b""
    for kind, value in iter_attrs(data):
        if kind == WGALLOWEDIP_A_FAMILY:
            (family,) = struct.unpack_from("=H", value)
        elif kind == WGALLOWEDIP_A_IPADDR:
            raw = value
        elif kind == WGALLOWEDIP_A_CIDR_MASK:
            mask = value[0]
    if family == socket.AF_INET and len(raw) == 4 and mask is not None:
        return ipaddress.IPv4Network((raw, mask))
    if family == socket.AF_INET6 and len(raw) == 16 and mask is not None:
        return ipaddress.IPv6Network((raw, mask))
    raise ValueError(f"malformed allowed IP (family {family}, {len(raw)} address bytes)")


def _decode_peer(data: bytes) -> PeerEntry:
    key: Key | None = None
    entry = PeerEntry(Key.zero())
    for kind, value in iter_attrs(data):
        if kind == WGPEER_A_PUBLIC_KEY:
            key = Key(value)
        elif kind == WGPEER_A_FLAGS:
            (entry.flags,) = struct.unpack_from("=I", value)
        elif kind == WGPEER_A_ENDPOINT:
            entry.endpoint = decode_endpoint(value)
        elif kind == WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL:
            (entry.persistent_keepalive,) = struct.unpack_from("=H", value)
        elif kind == WGPEER_A_LAST_HANDSHAKE_TIME:
            sec, nsec = _TIMESPEC.unpack_from(value)
            entry.last_handshake = sec + nsec / 1e9
        elif kind == WGPEER_A_RX_BYTES:
            (entry.rx_bytes,) = struct.unpack_from("=Q", value)
        elif kind == WGPEER_A_TX_BYTES:
            (entry.tx_bytes,) = struct.unpack_from("=Q", value)
        elif kind == WGPEER_A_ALLOWEDIPS:
            entry.has_allowed_ips = True
            entry.allowed_ips.extend(_decode_allowed_ip(v) for _, v in iter_attrs(value))
    if key is None:
        raise ValueError("peer entry without a public key")
    entry.public_key = key
    return entry


def decode_device(payload: bytes | memoryview) -> DeviceMessage:
    """Decode one generic-netlink payload (genl header + attributes) of the wireguard family."""
    cmd, _, _ = _GENLHDR.unpack_from(payload)
    msg = DeviceMessage(command=cmd)
    for kind, value in iter_attrs(payload, _GENLHDR.size):
        if kind == WGDEVICE_A_IFNAME:
            msg.ifname = value.split(b"\0", 1)[0].decode()
        elif kind == WGDEVICE_A_IFINDEX:
            (msg.ifindex,) = struct.unpack_from("=I", value)
        elif kind == WGDEVICE_A_PRIVATE_KEY and len(value) == KEY_LEN:
            msg.private_key = PrivateKey(value)
        elif kind == WGDEVICE_A_PUBLIC_KEY and len(value) == KEY_LEN:
            msg.public_key = Key(value)
        elif kind == WGDEVICE_A_LISTEN_PORT:
            (msg.listen_port,) = struct.unpack_from("=H", value)
        elif kind == WGDEVICE_A_FWMARK:
            (msg.fwmark,) = struct.unpack_from("=I", value)
        elif kind == WGDEVICE_A_FLAGS:
            (msg.flags,) = struct.unpack_from("=I", value)
        elif kind == WGDEVICE_A_PEERS:
            msg.peers.extend(_decode_peer(v) for _, v in iter_attrs(value))
    return msg


def merge_dump(name: str, messages: Sequence[DeviceMessage]) -> Device:
    """Fold the messages of one GET_DEVICE dump into a Device, merging peers split across messages."""
    private_key: PrivateKey | None = None
    public_key: Key | None = None
    listen_port = fwmark = 0
    peers: dict[Key, Peer] = {}
    for msg in messages:
        private_key = msg.private_key if msg.private_key is not None else private_key
        public_key = msg.public_key if msg.public_key is not None else public_key
        listen_port = msg.listen_port if msg.listen_port is not None else listen_port
        fwmark = msg.fwmark if msg.fwmark is not None else fwmark
        for entry in msg.peers:
            before = peers.get(entry.public_key)
            if before is None:
                peers[entry.public_key] = Peer(
                    public_key=entry.public_key,
                    endpoint=entry.endpoint,
                    allowed_ips=frozenset(entry.allowed_ips),
                    persistent_keepalive=entry.persistent_keepalive or 0,
                    last_handshake=entry.last_handshake,
                    rx_bytes=entry.rx_bytes,
                    tx_bytes=entry.tx_bytes,
                )
            else:
                # A continuation: the kernel repeats the key and sends the remaining allowed IPs.
                peers[entry.public_key] = Peer(
                    public_key=before.public_key,
                    endpoint=before.endpoint or entry.endpoint,
                    allowed_ips=before.allowed_ips | frozenset(entry.allowed_ips),
                    persistent_keepalive=before.persistent_keepalive
                    or (entry.persistent_keepalive or 0),
                    last_handshake=max(before.last_handshake, entry.last_handshake),
                    rx_bytes=max(before.rx_bytes, entry.rx_bytes),
                    tx_bytes=max(before.tx_bytes, entry.tx_bytes),
                )
    # The kernel reports an unset private key by leaving the attribute out; treat zeros the same.
    if private_key is not None and private_key.is_zero:
        private_key = None
    if public_key is not None and public_key.is_zero:
        public_key = None
    return Device(name, private_key, public_key, listen_port, fwmark, peers)


def merge_set_payloads(payloads: Sequence[bytes]) -> tuple[str, DeviceConfig]:
    """Reassemble the configuration that a sequence of SET_DEVICE payloads carries (the inverse of
    `set_device_payloads`; device settings are read from the first payload only)."""
    messages = [decode_device(p) for p in payloads]
    if not messages or messages[0].ifname is None:
        raise ValueError("no SET_DEVICE payload naming a device")
    first = messages[0]
    name = messages[0].ifname
    order: list[Key] = []
    pieces: dict[Key, list[PeerEntry]] = {}
    for msg in messages:
        for entry in msg.peers:
            if entry.public_key not in pieces:
                order.append(entry.public_key)
                pieces[entry.public_key] = []
            pieces[entry.public_key].append(entry)
    peers = []
    for key in order:
        head, *rest = pieces[key]
        allowed = list(head.allowed_ips)
        for piece in rest:
            allowed.extend(piece.allowed_ips)
        peers.append(
            PeerConfig(
                public_key=key,
                remove=bool(head.flags & WGPEER_F_REMOVE_ME),
                update_only=bool(head.flags & WGPEER_F_UPDATE_ONLY),
                endpoint=head.endpoint,
                persistent_keepalive=head.persistent_keepalive,
                replace_allowed_ips=bool(head.flags & WGPEER_F_REPLACE_ALLOWEDIPS),
                allowed_ips=tuple(allowed),
            )
        )
    config = DeviceConfig(
        private_key=first.private_key,
        listen_port=first.listen_port,
        fwmark=first.fwmark,
        replace_peers=bool(first.flags & WGDEVICE_F_REPLACE_PEERS),
        peers=tuple(peers),
    )
    return name, config


@dataclass(frozen=True, slots=True)
class NetlinkMessage:
    msg_type: int
    flags: int
    seq: int
    payload: bytes


def parse_messages(data: bytes | memoryview) -> list[NetlinkMessage]:
    """Split one datagram into netlink messages."""
    view = memoryview(data)
    out = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(view):
        length, msg_type, flags, seq, _ = _NLMSGHDR.unpack_from(view, offset)
        if length < _NLMSGHDR.size or offset + length > len(view):
            raise ValueError(f"malformed netlink message at offset {offset}")
        out.append(
            NetlinkMessage(
                msg_type, flags, seq, bytes(view[offset + _NLMSGHDR.size : offset + length])
            )
        )
        offset += _align(length)
    return out


def decode_error(msg: NetlinkMessage) -> tuple[int, str]:
    """(negative errno or 0, extended-ack text) from an NLMSG_ERROR message."""
    (err,) = struct.unpack_from("=i", msg.payload)
    text = ""
    if msg.flags & NLM_F_ACK_TLVS and len(msg.payload) >= 4 + _NLMSGHDR.size:
        # The echoed request header; with NETLINK_CAP_ACK its payload is left out (NLM_F_CAPPED).
        (echoed_len,) = struct.unpack_from("=I", msg.payload, 4)
        offset = 4 + (_NLMSGHDR.size if msg.flags & NLM_F_CAPPED else _align(echoed_len))
        with suppress(ValueError):
            for kind, value in iter_attrs(msg.payload, offset):
                if kind == NLMSGERR_ATTR_MSG:
                    text = value.split(b"\0", 1)[0].decode(errors="replace")
    return err, text


# --- the socket adapter -------------------------------------------------------------------------


class GenlWireguard:
    """`ports.WireguardDevices` for the kernel module, over a generic-netlink socket.

    The family id is resolved on first use (and again after a failure), so the adapter can be built
    before the module is loaded: creating the first WireGuard link loads it, and so does the family
    lookup itself when the caller may load modules. Calls are serialised by a lock.
    """

    def __init__(
        self,
        netns: str | None = None,
        timeout: float = 10.0,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self._where = f" in netns {netns}" if netns else ""
        self._max_message_size = max_message_size
        try:
            if netns is None:
                sock = socket.socket(
                    socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC
                )
            else:
                sock = open_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        except OSError as exc:
            raise kernel_error("open generic netlink socket", exc.errno or errno.EIO) from exc
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            # Without this, every error echoes the whole request back, private key included.
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.settimeout(timeout)
            sock.bind((0, 0))
        except OSError as exc:
            sock.close()
            raise kernel_error("set up generic netlink socket", exc.errno or errno.EIO) from exc
        self._sock = sock
        self._seq = int(time.time()) & 0x7FFFFFFF
        self._family: int | None = None
        self._lock = threading.Lock()

    # -- port methods ---------------------------------------------------------------------------

    def device(self, name: str) -> Device:
        with self._lock:
            family = self._family_id()
            for attempt in range(1, _DUMP_ATTEMPTS + 1):
                seq = self._send(family, NLM_F_REQUEST | NLM_F_DUMP, get_device_payload(name))
                messages, interrupted = self._read_dump(
                    seq, f"read WireGuard device {name}{self._where}"
                )
                if not interrupted:
                    device = merge_dump(name, [decode_device(m.payload) for m in messages])
                    log.debug(
                        "read device %s: %d peers in %d messages",
                        name,
                        len(device.peers),
                        len(messages),
                    )
                    return device
                log.debug(
                    "dump of %s changed while read (attempt %d), reading again", name, attempt
                )
            raise KernelError(
                f"read WireGuard device {name}{self._where}: dump kept changing", errno.EINTR
            )

    def configure(self, name: str, config: DeviceConfig) -> None:
        payloads = set_device_payloads(name, config, self._max_message_size)
        with self._lock:
            family = self._family_id()
            start = time.monotonic()
            for index, payload in enumerate(payloads):
                seq = self._send(family, NLM_F_REQUEST | NLM_F_ACK, payload)
                self._read_ack(
                    seq,
                    f"configure WireGuard device {name}{self._where}"
                    f" (message {index + 1}/{len(payloads)})",
                )
        log.debug(
            "configured device %s: %d peer changes in %d messages, %.1f ms",
            name,
            len(config.peers),
            len(payloads),
            (time.monotonic() - start) * 1000,
        )

    def close(self) -> None:
        self._sock.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _family_id(self) -> int:
        if self._family is not None:
            return self._family
        payload = _GENLHDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + _attr(
            CTRL_ATTR_FAMILY_NAME, WG_GENL_NAME.encode() + b"\0"
        )
        seq = self._send(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, payload)
        try:
            reply = self._read_reply(seq, "resolve generic netlink family wireguard")
        except NotFound as exc:
            raise NotSupported(
                "no WireGuard kernel module (generic netlink family 'wireguard' is not registered)",
                exc.errno,
            ) from exc
        for kind, value in iter_attrs(reply.payload, _GENLHDR.size):
            if kind == CTRL_ATTR_FAMILY_ID:
                family = int(struct.unpack_from("=H", value)[0])
                self._family = family
                return family
        raise KernelError("generic netlink family reply without a family id", errno.EPROTO)

    def _send(self, msg_type: int, flags: int, payload: bytes) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        try:
            self._sock.sendto(frame(msg_type, flags, self._seq, payload), (0, 0))
        except OSError as exc:
            raise kernel_error("send generic netlink message", exc.errno or errno.EIO) from exc
        return self._seq

    def _receive(self, what: str) -> list[NetlinkMessage]:
        try:
            data = self._sock.recv(_RECV_SIZE)
        except TimeoutError as exc:
            raise KernelError(f"{what}: no answer from the kernel", errno.ETIMEDOUT) from exc
        except OSError as exc:
            raise kernel_error(what, exc.errno or errno.EIO) from exc
        return parse_messages(data)

    def _raise(self, msg: NetlinkMessage, what: str) -> None:
        err, text = decode_error(msg)
        if err:
            raise kernel_error(f"{what}{': ' + text if text else ''}", err)

    def _read_ack(self, seq: int, what: str) -> None:
        while True:
            for msg in self._receive(what):
                if msg.seq != seq:
                    continue  # a leftover from an earlier, abandoned exchange
                if msg.msg_type == NLMSG_ERROR:
                    self._raise(msg, what)
                    return

    def _read_reply(self, seq: int, what: str) -> NetlinkMessage:
        reply: NetlinkMessage | None = None
        while True:
            for msg in self._receive(what):
                if msg.seq != seq:
                    continue
                if msg.msg_type == NLMSG_ERROR:
                    self._raise(msg, what)
                    if reply is None:
                        raise KernelError(f"{what}: acknowledged without a reply", errno.EPROTO)
                    return reply
                reply = msg

    def _read_dump(self, seq: int, what: str) -> tuple[list[NetlinkMessage], bool]:
        """Every part of a dump up to NLMSG_DONE, and whether the kernel flagged it inconsistent."""
        parts: list[NetlinkMessage] = []
        interrupted = False
        while True:
            for msg in self._receive(what):
                if msg.seq != seq:
                    continue
                interrupted = interrupted or bool(msg.flags & NLM_F_DUMP_INTR)
                if msg.msg_type == NLMSG_ERROR:
                    # A dump that cannot start (no such device) answers with an error instead.
                    self._raise(msg, what)
                    raise KernelError(f"{what}: dump acknowledged without data", errno.EPROTO)
                if msg.msg_type == NLMSG_DONE:
                    if len(msg.payload) >= 4:
                        (err,) = struct.unpack_from("=i", msg.payload)
                        if err < 0:
                            raise kernel_error(what, err)
                    return parts, interrupted
                parts.append(msg)
