"""An in-memory etcd v3 implementing `ports.Datastore`, with etcd's revision semantics.

Measured against etcd 3.4 (the contract suite runs the same checks on both):

- one global revision, starting at 1 for an empty store; a transaction that changes something
  increments it once, and every key it writes gets that revision as `mod_revision`; a key's
  `create_revision` is the revision that created it (a deleted and re-created key gets a new one);
  a transaction that changes nothing (failed compare, delete of a missing key) keeps the revision;
- a key may appear only once among a transaction's puts and deletes (etcd: "duplicate key given in
  txn request"): ValueError;
- `watch_prefix(prefix, start)` replays the history from `start` (0 = from the next revision), then
  delivers live events, in revision order, the events of one transaction in request order (puts,
  then deletes);
- `compact(rev)` drops the history below `rev`: a watch from a revision below it raises
  `RevisionCompacted(rev)` (a watch from `rev` itself still works); live watches are unaffected.

Test controls, not part of the port: `go_down()` / `come_up()` (while down every call and every live
watch raises `DatastoreUnavailable`), one-shot `fail_next(op, ...)`, `server_put` / `server_delete`
(writes by "another cluster member", which work while we are down), and `calls` (a Counter of port
calls). Async, single process: no locks needed, since nothing awaits between reading and writing.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from meshcrypt.model.errors import DatastoreUnavailable, RevisionCompacted
from meshcrypt.ports import EventKind, KeyValue, WatchEvent


class DatastoreOp(enum.Enum):
    GET = "get"
    LIST = "list_prefix"
    WATCH = "watch_prefix"
    TXN = "txn"


@dataclass(frozen=True, slots=True)
class _Fault:
    error: BaseException | None  # None: a txn conflict (returns False) or DatastoreUnavailable
    after_apply: bool  # txn only: apply the transaction, then raise (a lost response)


class _Down:
    """Queued to live watches when the store goes down."""


_DOWN = _Down()


class FakeDatastore:
    """In-memory etcd; see the module docstring."""

    def __init__(self) -> None:
        self._revision = 1
        self._data: dict[str, KeyValue] = {}
        self._history: list[WatchEvent] = []  # revision order
        self._compacted = 0
        self._watchers: set[asyncio.Queue[WatchEvent | _Down]] = set()
        self._down = False
        self._closed = False
        self._faults: dict[DatastoreOp, list[_Fault]] = {}
        self.calls: Counter[DatastoreOp] = Counter()

    # ---- test controls ---------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compacted_revision(self) -> int:
        return self._compacted

    @property
    def is_down(self) -> bool:
        return self._down

    @property
    def watch_count(self) -> int:
        """Live watches (a test checks that cancelled watches leave nothing behind)."""
        return len(self._watchers)

    def go_down(self) -> None:
        """Every call raises DatastoreUnavailable from now on; live watches raise it too."""
        self._down = True
        for queue in self._watchers:
            queue.put_nowait(_DOWN)

    def come_up(self) -> None:
        self._down = False

    def fail_next(
        self, op: DatastoreOp, error: BaseException | None = None, *, after_apply: bool = False
    ) -> None:
        """Make the next `op` fail once.

        `error=None`: a TXN returns False without applying (a compare conflict); any other op raises
        DatastoreUnavailable. With `after_apply=True` (TXN only) the transaction is applied and then
        `error` is raised, as when etcd commits but the response is lost.
        """
        if after_apply and (op is not DatastoreOp.TXN or error is None):
            raise ValueError("after_apply needs op=TXN and an error")
        self._faults.setdefault(op, []).append(_Fault(error, after_apply))

    def compact(self, revision: int) -> None:
        """Drop the history below `revision` (as etcd's Compact)."""
        if revision > self._revision:
            raise ValueError(f"cannot compact to future revision {revision} (now {self._revision})")
        if revision <= self._compacted:
            raise ValueError(f"revision {revision} is already compacted (at {self._compacted})")
        self._compacted = revision
        self._history = [ev for ev in self._history if ev.mod_revision >= revision]

    def server_put(self, key: str, value: bytes) -> int:
        """Write as another etcd client would (works while down); the new revision."""
        self._apply({key: value}, ())
        return self._revision

    def server_delete(self, key: str) -> int:
        """Delete as another etcd client would (works while down); the revision afterwards."""
        self._apply({}, (key,))
        return self._revision

    def snapshot(self) -> dict[str, bytes]:
        """Every key and value, for assertions."""
        return {key: kv.value for key, kv in sorted(self._data.items())}

    # ---- ports.Datastore -------------------------------------------------------------------------

    def _enter(self, op: DatastoreOp) -> _Fault | None:
        """Count the call, then fail it if the store is down or a fault is armed."""
        if self._closed:
            raise RuntimeError("the datastore client is closed")
        self.calls[op] += 1
        if self._down:
            raise DatastoreUnavailable("fake datastore is down")
        armed = self._faults.get(op)
        if not armed:
            return None
        fault = armed.pop(0)
        if fault.after_apply:
            return fault
        if fault.error is not None:
            raise fault.error
        if op is DatastoreOp.TXN:
            return fault
        raise DatastoreUnavailable(f"injected fault in {op.value}")

    async def get(self, key: str) -> KeyValue | None:
        self._enter(DatastoreOp.GET)
        await asyncio.sleep(0)
        return self._data.get(key)

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        self._enter(DatastoreOp.LIST)
        await asyncio.sleep(0)
        found = [kv for key, kv in sorted(self._data.items()) if key.startswith(prefix)]
        return found, self._revision

    async def txn(
        self,
        expect: Mapping[str, int],
        puts: Mapping[str, bytes],
        deletes: Sequence[str] = (),
    ) -> bool:
        _check_unique(puts, deletes)
        fault = self._enter(DatastoreOp.TXN)
        await asyncio.sleep(0)
        if fault is not None and not fault.after_apply:
            return False  # an injected conflict
        for key, revision in expect.items():
            current = self._data.get(key)
            if (current.mod_revision if current is not None else 0) != revision:
                return False
        self._apply(puts, deletes)
        if fault is not None and fault.error is not None:
            raise fault.error
        return True

    def _apply(self, puts: Mapping[str, bytes], deletes: Sequence[str]) -> None:
        revision = self._revision + 1
        events: list[WatchEvent] = []
        for key, value in puts.items():
            old = self._data.get(key)
            created = old.create_revision if old is not None else revision
            self._data[key] = KeyValue(key, bytes(value), revision, created)
            events.append(WatchEvent(EventKind.PUT, key, bytes(value), revision))
        for key in deletes:
            if self._data.pop(key, None) is not None:
                events.append(WatchEvent(EventKind.DELETE, key, b"", revision))
        if not events:
            return
        self._revision = revision
        self._history.extend(events)
        for queue in self._watchers:
            for event in events:
                queue.put_nowait(event)

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        self._enter(DatastoreOp.WATCH)
        start = start_revision if start_revision > 0 else self._revision + 1
        if start < self._compacted:
            raise RevisionCompacted(self._compacted)
        queue: asyncio.Queue[WatchEvent | _Down] = asyncio.Queue()
        for event in self._history:
            if event.mod_revision >= start:
                queue.put_nowait(event)
        self._watchers.add(queue)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Down):
                    raise DatastoreUnavailable("fake datastore went down during a watch")
                if item.mod_revision >= start and item.key.startswith(prefix):
                    yield item
        finally:
            self._watchers.discard(queue)

    async def close(self) -> None:
        self._closed = True
        for queue in self._watchers:
            queue.put_nowait(_DOWN)


def _check_unique(puts: Mapping[str, bytes], deletes: Sequence[str]) -> None:
    seen = set(puts)
    for key in deletes:
        if key in seen:
            raise ValueError(f"duplicate key given in txn request: {key}")
        seen.add(key)
