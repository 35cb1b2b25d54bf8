"""`ports.Datastore` over etcd v3 with aetcd (grpc.aio), across several endpoints.

aetcd provides the channel and the generated stubs; the requests are built here because aetcd's
helpers cannot page a range at a fixed revision, and its shared watch stream reports a compaction
only through its own error types. Each `watch_prefix` is its own gRPC stream (multiplexed on the one
HTTP/2 connection), so cancelling one is `call.cancel()` and leaves no task behind.

Endpoints and failover: calls go to one endpoint at a time. When a call finds it unavailable, the
connection is retired (closed once no call or watch uses it) and the next call connects to the next
endpoint, round robin. Reads (`get`, `list_prefix`) try each endpoint once within the call; a
transaction is never re-sent by the adapter, since a lost response leaves its outcome unknown — the
caller re-reads and decides. Waiting between attempts is the caller's job (the syncer's backoff).
A fresh channel per connection (with a private subchannel pool) also avoids gRPC's own reconnect
backoff, which grows to 120 s and would keep a restarted etcd unused for that long.

Errors: UNAVAILABLE, DEADLINE_EXCEEDED, a broken stream and anything else etcd says →
`DatastoreUnavailable` (the original chained); OUT_OF_RANGE (a read at a compacted revision) and a
watch cancelled for compaction → `RevisionCompacted`; INVALID_ARGUMENT (e.g. more operations in one
transaction than etcd's `--max-txn-ops`, 128 by default) → ValueError, a caller bug.

Measured against etcd 3.4 on loopback, 2 vCPUs (`test_etcd.py::test_timings...`): listing 10,000
keys of 640 B takes ~70 ms (10 pages); a watch delivers ~20,000 events/s; a one-key txn takes ~1 ms.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import aetcd
from aetcd import rpc

from meshcrypt.model.errors import ConfigError, DatastoreUnavailable, RevisionCompacted
from meshcrypt.ports import EventKind, KeyValue, WatchEvent

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 5.0
DEFAULT_PAGE_SIZE: Final = 1000
_LIST_ATTEMPTS: Final = 3  # a listing whose revision is compacted mid-way starts over

_CHANNEL_OPTIONS: Final[dict[str, int]] = {
    # Channels to one target share subchannels (and their reconnect backoff) by default.
    "grpc.use_local_subchannel_pool": 1,
    "grpc.initial_reconnect_backoff_ms": 100,
    # Despite its name this is gRPC's *minimum connect timeout*: every connection attempt gets at
    # least this long. At 100 ms a connection whose first SYN was lost (a WireGuard handshake being
    # retried on the way, a busy host, a distant member) failed again and again; a call's own
    # deadline (`timeout`, 5 s) still bounds how long a caller waits.
    "grpc.min_reconnect_backoff_ms": int(DEFAULT_TIMEOUT * 1000),
    "grpc.max_reconnect_backoff_ms": 2000,
    # Detect a silently dead peer under a quiet watch stream within ~15 s. etcd refuses pings more
    # often than every 5 s (--grpc-keepalive-min-time) and pings without a stream at all.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.http2.max_pings_without_data": 0,
    # A page of 1000 Calico resources can pass gRPC's default 4 MiB.
    "grpc.max_receive_message_length": 256 * 1024 * 1024,
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    host: str
    port: int


def parse_endpoints(endpoints: Sequence[str]) -> list[Endpoint]:
    """`http://host:port` URLs (IPv6 hosts in brackets). Raises ConfigError."""
    parsed: list[Endpoint] = []
    for raw in endpoints:
        url = raw.strip()
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError("ETCD_ENDPOINTS", url, f"bad port: {exc}") from exc
        if parts.scheme != "http" or not parts.hostname or port is None:
            raise ConfigError(
                "ETCD_ENDPOINTS", url, "expected http://host:port (TLS is not supported)"
            )
        parsed.append(Endpoint(url, parts.hostname, port))
    if not parsed:
        raise ConfigError("ETCD_ENDPOINTS", list(endpoints), "no endpoint given")
    return parsed


def prefix_range_end(prefix: bytes) -> bytes:
    """The exclusive end of the key range of every key that starts with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # no end: every key from `prefix` on


def _text(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _key_value(kv: Any) -> KeyValue:
    return KeyValue(_text(kv.key), bytes(kv.value), int(kv.mod_revision), int(kv.create_revision))


@dataclass(eq=False)
class _Connection:
    """One aetcd client (one gRPC channel) to one endpoint, and how many calls are using it."""

    endpoint: Endpoint
    client: Any
    users: int = 0
    retired: bool = False
    closed: bool = False

    @property
    def kv(self) -> Any:
        return self.client.kvstub

    @property
    def metadata(self) -> Any:
        return self.client.metadata


class EtcdDatastore:
    """A `ports.Datastore` on etcd v3. Make it inside the running event loop; `close()` it."""

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = DEFAULT_TIMEOUT,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self._endpoints = parse_endpoints(endpoints)
        self._timeout = timeout
        self._page_size = page_size
        self._index = 0
        self._conn: _Connection | None = None
        self._open: set[_Connection] = set()
        self._closers: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The endpoint the next call goes to."""
        return self._endpoints[self._index].url

    # ---- connections -----------------------------------------------------------------------------

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise RuntimeError("the etcd datastore is closed")
        conn = self._conn
        if conn is None:
            endpoint = self._endpoints[self._index]
            client = aetcd.Client(
                # aetcd joins host and port as the gRPC target: an IPv6 host needs its brackets.
                host=f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host,
                port=endpoint.port,
                timeout=self._timeout,
                options=dict(_CHANNEL_OPTIONS),
            )
            await client.connect()  # makes the channel; nothing goes on the wire yet
            conn = _Connection(endpoint, client)
            self._conn = conn
            self._open.add(conn)
            log.debug("etcd: using endpoint %s", endpoint.url)
        conn.users += 1
        return conn

    def _release(self, conn: _Connection) -> None:
        conn.users -= 1
        if conn.retired and conn.users == 0:
            self._close_later(conn)

    def _retire(self, conn: _Connection, reason: str) -> None:
        """Stop using `conn` for new calls and move on to the next endpoint."""
        if conn.retired:
            return
        conn.retired = True
        if self._conn is conn:
            self._conn = None
            self._index = (self._index + 1) % len(self._endpoints)
            # INFO: the caller, which knows what happens next, logs the warning.
            log.info(
                "etcd endpoint %s unavailable (%s); the next call goes to %s",
                conn.endpoint.url,
                reason,
                self._endpoints[self._index].url,
            )
        if conn.users == 0:
            self._close_later(conn)

    def _close_later(self, conn: _Connection) -> None:
        if conn not in self._open:
            return
        self._open.discard(conn)
        task = asyncio.get_running_loop().create_task(self._close_client(conn))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    @staticmethod
    async def _close_client(conn: _Connection) -> None:
        conn.closed = True
        try:
            await conn.client.close()
        except Exception as exc:  # noqa: BLE001 - a broken channel may fail to close; it is dropped
            log.debug("etcd: closing the client of %s failed: %r", conn.endpoint.url, exc)

    def _translate(self, conn: _Connection, what: str, exc: Exception) -> Exception:
        """The meshcrypt error for a failed call; retires the connection when it is unusable."""
        rpc_error: Any = exc if isinstance(exc, rpc.AioRpcError) else None
        code = rpc_error.code() if rpc_error is not None else None
        if code == rpc.StatusCode.OUT_OF_RANGE:
            # etcd does not say where the compaction is (0 = unknown; `_list_pages` knows better).
            return RevisionCompacted(0)
        if code == rpc.StatusCode.INVALID_ARGUMENT:
            return ValueError(f"etcd rejected {what}: {rpc_error.details()}")
        detail = f"{code.name}: {rpc_error.details()}" if code is not None else repr(exc)
        self._retire(conn, detail)
        return DatastoreUnavailable(f"etcd {what} at {conn.endpoint.url} failed ({detail})")

    async def _call(
        self, what: str, call: Callable[[_Connection], Awaitable[T]], *, failover: bool
    ) -> T:
        """Run `call` on a connection; with `failover`, try each endpoint once on unavailability."""
        attempts = len(self._endpoints) if failover else 1
        for attempt in range(1, attempts + 1):
            conn = await self._acquire()
            try:
                return await call(conn)
            except asyncio.CancelledError:
                _raise_if_closed(conn, what)
                raise
            except (rpc.AioRpcError, aetcd.ClientError) as exc:
                error = self._translate(conn, what, exc)
                if isinstance(error, DatastoreUnavailable) and attempt < attempts:
                    continue
                raise error from exc
            finally:
                self._release(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- ports.Datastore -------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        async def call(conn: _Connection) -> KeyValue | None:
            request = rpc.RangeRequest(key=_bytes(key))
            response = await conn.kv.Range(request, timeout=self._timeout, metadata=conn.metadata)
            return _key_value(response.kvs[0]) if response.kvs else None

        return await self._call(f"get {key}", call, failover=True)

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        for attempt in range(1, _LIST_ATTEMPTS + 1):
            try:
                return await self._call(
                    f"list {prefix}", lambda conn: self._list_pages(conn, prefix), failover=True
                )
            except RevisionCompacted:
                if attempt == _LIST_ATTEMPTS:
                    raise
                log.info("etcd: listing %s was compacted mid-way; listing again", prefix)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _list_pages(self, conn: _Connection, prefix: str) -> tuple[list[KeyValue], int]:
        """Page through the prefix at the revision of the first page: a consistent listing."""
        start = _bytes(prefix) if prefix else b"\0"
        end = prefix_range_end(_bytes(prefix)) if prefix else b"\0"
        revision = 0
        found: list[KeyValue] = []
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, limit=self._page_size, revision=revision
            )
            try:
                response = await conn.kv.Range(
                    request, timeout=self._timeout, metadata=conn.metadata
                )
            except rpc.AioRpcError as exc:
                if exc.code() == rpc.StatusCode.OUT_OF_RANGE:
                    # Compacted past the listing's revision, so at least one past it.
                    raise RevisionCompacted(revision + 1) from exc
                raise
            if revision == 0:
                revision = int(response.header.revision)
            found.extend(_key_value(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return found, revision
            start = bytes(response.kvs[-1].key) + b"\0"

    async def txn(
        self,
        expect: Mapping[str, int],
        puts: Mapping[str, bytes],
        deletes: Sequence[str] = (),
    ) -> bool:
        _check_unique(puts, deletes)
        compare = [_compare(key, revision) for key, revision in expect.items()]
        success = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=_bytes(key), value=bytes(value)))
            for key, value in puts.items()
        ]
        success += [
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=_bytes(key)))
            for key in deletes
        ]
        request = rpc.TxnRequest(compare=compare, success=success)

        async def call(conn: _Connection) -> bool:
            response = await conn.kv.Txn(request, timeout=self._timeout, metadata=conn.metadata)
            return bool(response.succeeded)

        return await self._call("txn", call, failover=False)

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        conn = await self._acquire()
        stream: Any = None
        try:
            stream = rpc.WatchStub(conn.client.channel).Watch(metadata=conn.metadata)
            create = rpc.WatchCreateRequest(
                key=_bytes(prefix) if prefix else b"\0",
                range_end=prefix_range_end(_bytes(prefix)) if prefix else b"\0",
                start_revision=max(start_revision, 0),
            )
            await stream.write(rpc.WatchRequest(create_request=create))
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
            # arrives as the read completes, and the cancelled watch then waited for events forever.
            async with asyncio.timeout(self._timeout):
                response = await stream.read()
            while True:
                if not isinstance(response, rpc.WatchResponse):  # grpc.aio.EOF
                    raise self._translate(conn, f"watch {prefix}", EOFError("watch stream ended"))
                if response.compact_revision:
                    raise RevisionCompacted(int(response.compact_revision))
                if response.canceled:
                    reason = response.cancel_reason or "no reason given"
                    raise DatastoreUnavailable(f"etcd cancelled the watch on {prefix}: {reason}")
                for event in response.events:
                    if event.type == rpc.Event.DELETE:
                        yield WatchEvent(
                            EventKind.DELETE, _text(event.kv.key), b"", int(event.kv.mod_revision)
                        )
                    else:
                        kv = event.kv
                        yield WatchEvent(
                            EventKind.PUT, _text(kv.key), bytes(kv.value), int(kv.mod_revision)
                        )
                response = await stream.read()
        except (rpc.AioRpcError, aetcd.ClientError) as exc:
            raise self._translate(conn, f"watch {prefix}", exc) from exc
        except TimeoutError as exc:
            raise self._translate(conn, f"watch {prefix}", exc) from exc
        except asyncio.CancelledError:
            _raise_if_closed(conn, f"watch {prefix}")
            raise
        finally:
            # Runs on normal exit, on error and on aclose()/cancellation: nothing may await here.
            if stream is not None:
                stream.cancel()
            self._release(conn)

    async def close(self) -> None:
        """Close every connection; calls and watches in flight raise DatastoreUnavailable, later
        calls RuntimeError."""
        self._closed = True
        self._conn = None
        for conn in list(self._open):
            self._open.discard(conn)
            await self._close_client(conn)
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)


def _raise_if_closed(conn: _Connection, what: str) -> None:
    """gRPC ends the calls of a closed channel with CancelledError, which would look like a
    cancellation of the caller's task. When we closed the channel and nobody cancelled the task,
    say what happened instead."""
    task = asyncio.current_task()
    if conn.closed and (task is None or task.cancelling() == 0):
        raise DatastoreUnavailable(f"etcd {what}: the client was closed") from None


def _compare(key: str, revision: int) -> Any:
    if revision == 0:  # must not exist
        return rpc.Compare(
            key=_bytes(key),
            target=rpc.Compare.CREATE,
            result=rpc.Compare.EQUAL,
            create_revision=0,
        )
    return rpc.Compare(
        key=_bytes(key), target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision
    )


def _check_unique(puts: Mapping[str, bytes], deletes: Sequence[str]) -> None:
    """etcd refuses a transaction that names one key twice; say so before sending it."""
    seen = set(puts)
    for key in deletes:
        if key in seen:
            raise ValueError(f"duplicate key given in txn request: {key}")
        seen.add(key)
