"""A synchronous client of wireguard-go's control socket (the cross-platform UAPI text protocol).

wireguard-go listens on ``<socket_dir>/<iface>.sock``. A request is ``set=1`` or ``get=1``, then
``key=value`` lines, then an empty line; every reply ends with ``errno=N`` and an empty line, where N is
0 or a negative errno. One connection carries any number of requests, so the client keeps one open per
device and reuses it.

Facts this module is built on (measured against wireguard-go 0.0.20220316):

* Keys are lowercase hex. In ``get`` output ``fwmark`` is omitted when 0, ``private_key`` when unset and
  ``listen_port`` when 0; unknown keys are ignored so newer versions parse.
* wireguard-go stores the private key clamped: compare with ``PrivateKey.clamped()``.
* A ``set`` is applied line by line and stops at the first bad line. After a failure wireguard-go
  discards the rest of the request and, if that rest was still in flight, closes the connection; its
  ``errno`` reply is still readable from our receive buffer, so it is read even when sending failed.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass, field

from meshcrypt.model.dataplane import Device, DeviceConfig, Endpoint, Peer
from meshcrypt.model.errors import KernelError, NotFound, kernel_error
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import CIDR, IPAddress, IPFamily, cidr_from_int

log = logging.getLogger(__name__)

DEFAULT_SOCKET_DIR = "/var/run/wireguard"
DEFAULT_TIMEOUT = 30.0
_RECV_SIZE = 1 << 20
_REPLY_END = b"\n\n"


class _ConnectionLost(Exception):
    """The socket closed before a whole reply arrived (wireguard-go exited or dropped us)."""


def valid_iface_name(name: str) -> bool:
    """A Linux interface name: 1 to 15 bytes, no slash or whitespace (so it stays a file name)."""
    return (
        0 < len(name.encode()) < 16
        and name not in (".", "..")
        and not any(c == "/" or c.isspace() for c in name)
    )


def socket_path(socket_dir: str, iface: str) -> str:
    return os.path.join(socket_dir, f"{iface}.sock")


# --------------------------------------------------------------------------------------------------
# Encoding


def _ip_text(ip: IPAddress) -> str:
    # inet_ntop is several times faster than ipaddress' own formatting (10x for IPv6), and encoding
    # 5,000 peers is on the agent's hot path. A zone index is only kept by str().
    if isinstance(ip, ipaddress.IPv4Address):
        return socket.inet_ntop(socket.AF_INET, ip.packed)
    if ip.scope_id:
        return str(ip)
    return socket.inet_ntop(socket.AF_INET6, ip.packed)


def _cidr_text(cidr: CIDR) -> str:
    return f"{_ip_text(cidr.network_address)}/{cidr.prefixlen}"


def _endpoint_text(endpoint: Endpoint) -> str:
    ip = endpoint.ip
    if isinstance(ip, ipaddress.IPv4Address):
        return f"{_ip_text(ip)}:{endpoint.port:d}"
    return f"[{_ip_text(ip)}]:{endpoint.port:d}"


def encode_set(config: DeviceConfig) -> bytes:
    """The whole ``set=1`` request for one configuration call, ending with the empty line.

    Device keys come first (wireguard-go reads every line after the first ``public_key`` as a peer
    setting), and ``update_only``/``remove`` come right after their ``public_key``, before anything
    that could create the peer.
    """
    out: list[str] = ["set=1\n"]
    if config.private_key is not None:
        out.append(f"private_key={config.private_key.raw.hex()}\n")
    if config.listen_port is not None:
        out.append(f"listen_port={config.listen_port:d}\n")
    if config.fwmark is not None:
        out.append(f"fwmark={config.fwmark:d}\n")
    if config.replace_peers:
        out.append("replace_peers=true\n")
    append = out.append
    for peer in config.peers:
        append(f"public_key={peer.public_key.raw.hex()}\n")
        if peer.remove:
            append("remove=true\n")
            continue
        if peer.update_only:
            append("update_only=true\n")
        if peer.endpoint is not None:
            append(f"endpoint={_endpoint_text(peer.endpoint)}\n")
        if peer.persistent_keepalive is not None:
            append(f"persistent_keepalive_interval={peer.persistent_keepalive:d}\n")
        if peer.replace_allowed_ips:
            append("replace_allowed_ips=true\n")
        for cidr in peer.allowed_ips:
            append(f"allowed_ip={_cidr_text(cidr)}\n")
    out.append("\n")
    return "".join(out).encode("ascii")


# --------------------------------------------------------------------------------------------------
# Parsing


@dataclass(slots=True)
class _PeerFields:
    public_key: Key
    endpoint: Endpoint | None = None
    allowed_ips: list[CIDR] = field(default_factory=list)
    keepalive: int = 0
    handshake_sec: int = 0
    handshake_nsec: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0

    def build(self) -> Peer:
        handshake = self.handshake_sec + self.handshake_nsec / 1e9 if self.handshake_sec else 0.0
        return Peer(
            public_key=self.public_key,
            endpoint=self.endpoint,
            allowed_ips=frozenset(self.allowed_ips),
            persistent_keepalive=self.keepalive,
            last_handshake=handshake,
            rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes,
        )

    def set(self, key: str, value: str) -> None:
        """Record one peer line; keys this client does not use are ignored."""
        if key == "allowed_ip":
            self.allowed_ips.append(parse_cidr_text(value))
        elif key == "endpoint":
            self.endpoint = parse_endpoint(value)
        elif key == "last_handshake_time_sec":
            self.handshake_sec = int(value)
        elif key == "last_handshake_time_nsec":
            self.handshake_nsec = int(value)
        elif key == "rx_bytes":
            self.rx_bytes = int(value)
        elif key == "tx_bytes":
            self.tx_bytes = int(value)
        elif key == "persistent_keepalive_interval":
            self.keepalive = int(value)


@dataclass(slots=True)
class _DeviceFields:
    private_key: PrivateKey | None = None
    listen_port: int = 0  # omitted by wireguard-go when 0
    fwmark: int = 0  # omitted when 0

    def set(self, key: str, value: str) -> None:
        if key == "private_key":  # omitted when unset
            self.private_key = PrivateKey(bytes.fromhex(value))
        elif key == "listen_port":
            self.listen_port = int(value)
        elif key == "fwmark":
            self.fwmark = int(value)


def _parse_ip(text: str) -> IPAddress:
    try:
        if ":" not in text:
            return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
        if "%" not in text:
            return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
    except OSError as exc:
        raise ValueError(f"not an IP address: {text!r}") from exc
    return ipaddress.IPv6Address(text)


# A resync reads every peer back, and the same allowed IPs and endpoints come back every time: caching
# the parsed (immutable) values makes a 5,000-peer read several times cheaper than parsing afresh.
@functools.lru_cache(maxsize=1 << 16)
def parse_cidr_text(text: str) -> CIDR:
    """``10.0.0.0/24`` or ``fd00::/64`` as wireguard-go prints allowed IPs."""
    addr, sep, plen = text.partition("/")
    if not sep:
        raise ValueError(f"allowed IP without prefix length: {text!r}")
    ip = _parse_ip(addr)
    return cidr_from_int(int(ip), int(plen), IPFamily(ip.version), strict=False)


@functools.lru_cache(maxsize=1 << 16)
def parse_endpoint(text: str) -> Endpoint:
    """``1.2.3.4:51820`` or ``[fd00::1]:51820``."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"endpoint without port: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Endpoint(_parse_ip(host), int(port))


def parse_get(name: str, reply: str) -> Device:
    """Build a Device from the body of a ``get=1`` reply (without the ``errno`` line)."""
    dev = _DeviceFields()
    peers: dict[Key, Peer] = {}
    cur: _PeerFields | None = None
    for line in reply.split("\n"):
        if not line:
            continue
        key, _, value = line.partition("=")
        try:
            if key == "public_key":
                if cur is not None:
                    peers[cur.public_key] = cur.build()
                cur = _PeerFields(Key(bytes.fromhex(value)))
            elif cur is not None:
                cur.set(key, value)
            else:
                dev.set(key, value)
        except ValueError:
            # Never chain or echo the value: it may be the private key.
            raise KernelError(
                f"wireguard-go {name}: unparseable {key!r} in get reply", errno.EPROTO
            ) from None
    if cur is not None:
        peers[cur.public_key] = cur.build()
    private_key = dev.private_key
    return Device(
        name=name,
        private_key=private_key,
        public_key=private_key.public_key() if private_key is not None else None,
        listen_port=dev.listen_port,
        fwmark=dev.fwmark,
        peers=peers,
    )


def _split_reply(reply: bytes) -> tuple[int, str]:
    """(errno as wireguard-go sent it, body without the errno line)."""
    text = reply.decode("ascii", "replace")
    body, _, last = text.rstrip("\n").rpartition("\n")
    if not last.startswith("errno="):
        raise ValueError("reply does not end with errno")
    return int(last[len("errno=") :]), body


# --------------------------------------------------------------------------------------------------
# Connection


class _Connection:
    """One stream socket to one device's UAPI listener; strictly request, then reply."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def exchange(self, payload: bytes) -> bytes:
        """Send one request and return its whole reply. Raises _ConnectionLost."""
        try:
            self.sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # wireguard-go stops reading at the first bad line of a set and closes the connection
            # while we are still sending; the errno it wrote first is waiting in our buffer.
            return self._read_reply(lost_cause=exc)
        return self._read_reply(lost_cause=None)

    def _read_reply(self, lost_cause: BaseException | None) -> bytes:
        buf = bytearray()
        while not buf.endswith(_REPLY_END):
            try:
                chunk = self.sock.recv(_RECV_SIZE)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise _ConnectionLost(str(exc)) from (lost_cause or exc)
            if not chunk:
                raise _ConnectionLost("connection closed by wireguard-go") from lost_cause
            buf += chunk
        return bytes(buf)

    def peer_pid(self) -> int:
        """The PID of the process serving the socket (SO_PEERCRED)."""
        creds = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, _uid, _gid = struct.unpack("3i", creds)
        return int(pid)

    def close(self) -> None:
        self.sock.close()


def probe(path: str, timeout: float = 2.0) -> int | None:
    """The PID of the wireguard-go answering on `path`, or None when nothing answers there.

    Sends an empty ``set`` (a no-op that wireguard-go acknowledges with errno=0).
    """
    try:
        conn = _Connection(path, timeout)
    except OSError:
        return None
    try:
        reply = conn.exchange(b"set=1\n\n")
        err, _ = _split_reply(reply)
        return conn.peer_pid() if err == 0 else None
    except (OSError, ValueError, _ConnectionLost):
        return None
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------
# The port implementation


class UapiWireguardDevices:
    """`ports.WireguardDevices` over wireguard-go's UAPI sockets. Not thread-safe.

    What a caller must assume when `configure` raises: wireguard-go applies a ``set`` line by line and
    stops at the first line it rejects, so ANY prefix of the requested changes may be in force (device
    settings first, then peers in the order given; a peer may exist without the endpoint or allowed IPs
    that followed the bad line). The caller must not trust its idea of the device any more: read it back
    with `device()` and resync (the WireGuard manager does a full resync after any failure).
    """

    def __init__(
        self, socket_dir: str = DEFAULT_SOCKET_DIR, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.socket_dir = socket_dir
        self.timeout = timeout
        self._conns: dict[str, _Connection] = {}

    def socket_path(self, name: str) -> str:
        return socket_path(self.socket_dir, name)

    def device(self, name: str) -> Device:
        body = self._request(name, b"get=1\n\n", "get")
        return parse_get(name, body)

    def configure(self, name: str, config: DeviceConfig) -> None:
        """Apply `config` in ONE ``set`` transaction. See the class docstring for failures."""
        if config.is_empty:
            return
        payload = encode_set(config)
        log.debug("%s: set with %d peer changes (%d bytes)", name, len(config.peers), len(payload))
        self._request(name, payload, "set")

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def __enter__(self) -> UapiWireguardDevices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------

    def _request(self, name: str, payload: bytes, what: str) -> str:
        conn = self._conns.get(name)
        reused = conn is not None
        if conn is None:
            conn = self._connect(name)
        try:
            reply = self._exchange(name, conn, what, payload)
        except _ConnectionLost as exc:
            if not reused:
                raise kernel_error(
                    f"wireguard-go {name}: connection lost during {what}", errno.ECONNRESET
                ) from exc
            # The kept connection belonged to a wireguard-go that has since exited (restart). Nothing
            # was applied by the new one, and every request we send is idempotent: retry once.
            log.info("%s: wireguard-go closed the connection (restarted?); reconnecting", name)
            conn = self._connect(name)
            try:
                reply = self._exchange(name, conn, what, payload)
            except _ConnectionLost as exc2:
                raise kernel_error(
                    f"wireguard-go {name}: connection lost during {what}", errno.ECONNRESET
                ) from exc2
        try:
            err, body = _split_reply(reply)
        except ValueError as exc:
            self._drop(name)
            raise KernelError(f"wireguard-go {name}: malformed {what} reply", errno.EPROTO) from exc
        if err != 0:
            # After a failed set wireguard-go may have left part of our request unread on the stream;
            # start the next request on a fresh connection.
            self._drop(name)
            raise kernel_error(f"wireguard-go {name}: {what} failed", err) from OSError(
                abs(err), os.strerror(abs(err))
            )
        return body

    def _exchange(self, name: str, conn: _Connection, what: str, payload: bytes) -> bytes:
        try:
            return conn.exchange(payload)
        except _ConnectionLost:
            self._drop(name)
            raise
        except TimeoutError as exc:
            self._drop(name)
            raise kernel_error(f"wireguard-go {name}: {what} timed out", errno.ETIMEDOUT) from exc
        except OSError as exc:
            self._drop(name)
            raise kernel_error(
                f"wireguard-go {name}: {what} failed", exc.errno or errno.EIO
            ) from exc

    def _connect(self, name: str) -> _Connection:
        if not valid_iface_name(name):
            raise NotFound(f"no wireguard-go device {name!r}: not an interface name", errno.ENODEV)
        path = self.socket_path(name)
        try:
            conn = _Connection(path, self.timeout)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            # No socket, or a stale one left by a wireguard-go that was killed: no device either way.
            raise NotFound(
                f"no wireguard-go device {name} ({path})", exc.errno or errno.ENOENT
            ) from exc
        except OSError as exc:
            raise kernel_error(
                f"wireguard-go {name}: connect {path}", exc.errno or errno.EIO
            ) from exc
        self._conns[name] = conn
        return conn

    def _drop(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        if conn is not None:
            conn.close()
