"""List-then-watch: keeps a consumer in step with every key under some prefixes, with no lost event.

::

        ┌─────────── list every prefix ──► on_snapshot(Snapshot) ── synced ──┐
        │   (each listing at one revision R)                                 │
        │                                                                    ▼
        │                                          watch each prefix from its R + 1
        │                                          every event ──► on_event(WatchEvent)
        │                                                                    │
        └── RevisionCompacted / DatastoreUnavailable / watch ended ◄─────────┘
              (not synced; wait 0.1 s → 5 s, doubling, ±20 % jitter; reset after 5 s of a good watch)

Why a full re-list after *any* failure, not a re-watch from the last revision: while we were away
etcd may have compacted the history we would need, and a re-list is the one step that is right in
every case. A re-list cannot tell the consumer what was deleted meanwhile, so each `Snapshot` carries
the difference to what the consumer was last told: `changed` (new or modified keys) and `removed`
(keys delivered before that no longer exist). A consumer that applies `changed` and `removed`, or
replaces its state with `kvs`, keeps no stale key.

Each prefix has its own listing revision and its own watch, so the combined snapshot is consistent per
prefix, not across prefixes (as Calico's own per-resource watchers). Prefixes must not overlap.
Callbacks are plain functions called on the event loop; an exception from one ends `run()` (it is a
bug in the consumer, not a datastore failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from meshcrypt.datastore import layout
from meshcrypt.model.errors import DatastoreUnavailable, RevisionCompacted
from meshcrypt.ports import Datastore, EventKind, KeyValue, WatchEvent

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0


class SnapshotDiff(NamedTuple):
    upserts: list[KeyValue]  # keys that are new or whose mod_revision changed, in key order
    deletes: list[str]  # keys known before and absent now, in key order


def diff_snapshot(known: Mapping[str, int], current: Mapping[str, KeyValue]) -> SnapshotDiff:
    """What turns a consumer that knows `known` (key → mod_revision) into one that knows `current`."""
    upserts = [kv for key, kv in sorted(current.items()) if known.get(key) != kv.mod_revision]
    deletes = sorted(key for key in known if key not in current)
    return SnapshotDiff(upserts, deletes)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every key under the syncer's prefixes, and how that differs from what was delivered before."""

    kvs: Mapping[str, KeyValue]
    revision: int  # the newest listing revision
    changed: tuple[KeyValue, ...]
    removed: tuple[str, ...]
    first: bool  # the first snapshot of this syncer (then `removed` is empty)


class Backoff:
    """Exponential delays with jitter: `initial`, doubling up to `maximum`, each ±`jitter`."""

    def __init__(
        self,
        initial: float = BACKOFF_INITIAL,
        maximum: float = BACKOFF_MAX,
        jitter: float = 0.2,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= maximum or not 0 <= jitter < 1:
            raise ValueError("need 0 < initial <= maximum and 0 <= jitter < 1")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._rng = rng
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next_delay(self) -> float:
        base = self._next
        self._next = min(self._next * 2, self.maximum)
        return min(base * (1 + self.jitter * (2 * self._rng() - 1)), self.maximum)


class _Stopped:
    pass


_STOPPED = _Stopped()


async def close_watch(events: AsyncIterator[WatchEvent]) -> None:
    """Close a watch now (an async generator's `aclose`), not whenever it is garbage-collected."""
    if isinstance(events, AsyncGenerator):
        await events.aclose()


class Syncer:
    """Runs the list-then-watch loop until `stop()`; see the module docstring."""

    def __init__(
        self,
        datastore: Datastore,
        on_snapshot: Callable[[Snapshot], None],
        on_event: Callable[[WatchEvent], None],
        prefixes: Sequence[str] = layout.WATCH_PREFIXES,
        *,
        backoff: Backoff | None = None,
        healthy_after: float = BACKOFF_MAX,
    ) -> None:
        _check_prefixes(prefixes)
        self._datastore = datastore
        self._on_snapshot = on_snapshot
        self._on_event = on_event
        self._prefixes = tuple(prefixes)
        self._backoff = backoff if backoff is not None else Backoff()
        self._healthy_after = healthy_after
        self._known: dict[str, int] = {}
        self._stop = asyncio.Event()
        self.synced = asyncio.Event()  # set while the consumer is in step with the datastore
        self.snapshots = 0  # snapshots delivered (1 + re-lists)
        self.revision = 0  # newest revision delivered

    def stop(self) -> None:
        """Make `run()` return soon (its watches are closed)."""
        self._stop.set()

    async def run(self) -> None:
        """List, deliver, watch; re-list after every failure, until `stop()`."""
        while not self._stop.is_set():
            watch_started: float | None = None
            try:
                revisions = await self._until_stopped(self._list_all())
                if isinstance(revisions, _Stopped):
                    break
                watch_started = time.monotonic()
                await self._watch_all(revisions)
                break  # only a stop ends the watches without an error
            except (RevisionCompacted, DatastoreUnavailable) as exc:
                self.synced.clear()
                if (
                    watch_started is not None
                    and time.monotonic() - watch_started >= self._healthy_after
                ):
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                if isinstance(exc, RevisionCompacted):
                    log.info(
                        "datastore history compacted (%s); listing again in %.2f s", exc, delay
                    )
                else:
                    log.warning("datastore unavailable (%s); listing again in %.2f s", exc, delay)
                await self._until_stopped(asyncio.sleep(delay))
        self.synced.clear()

    # ---- listing ---------------------------------------------------------------------------------

    async def _list_all(self) -> dict[str, int]:
        """List every prefix, deliver the snapshot; each prefix's listing revision."""
        kvs: dict[str, KeyValue] = {}
        revisions: dict[str, int] = {}
        for prefix in self._prefixes:
            found, revisions[prefix] = await self._datastore.list_prefix(prefix)
            kvs.update((kv.key, kv) for kv in found)
        diff = diff_snapshot(self._known, kvs)
        self._known = {key: kv.mod_revision for key, kv in kvs.items()}
        revision = max(revisions.values())
        self.revision = max(self.revision, revision)
        snapshot = Snapshot(
            kvs, revision, tuple(diff.upserts), tuple(diff.deletes), self.snapshots == 0
        )
        self.snapshots += 1
        log.info(
            "datastore snapshot: %d keys at revision %d (%d changed, %d removed)",
            len(kvs),
            revision,
            len(diff.upserts),
            len(diff.deletes),
        )
        self._on_snapshot(snapshot)
        self.synced.set()
        return revisions

    # ---- watching --------------------------------------------------------------------------------

    async def _watch_all(self, revisions: Mapping[str, int]) -> None:
        """Watch every prefix until one watch fails (raised) or `stop()` (returns)."""
        tasks = [
            asyncio.ensure_future(self._watch_one(prefix, revision + 1))
            for prefix, revision in revisions.items()
        ]
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [*tasks, stopper]:
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
        for task in tasks:
            error = task.exception() if task in done and not task.cancelled() else None
            if error is not None:
                raise error

    async def _watch_one(self, prefix: str, start: int) -> None:
        events = self._datastore.watch_prefix(prefix, start)
        try:
            async for event in events:
                self._deliver(event)
        finally:
            await close_watch(events)
        raise DatastoreUnavailable(f"the watch on {prefix} ended")

    def _deliver(self, event: WatchEvent) -> None:
        if event.kind is EventKind.PUT:
            self._known[event.key] = event.mod_revision
        else:
            self._known.pop(event.key, None)
        self.revision = max(self.revision, event.mod_revision)
        self._on_event(event)

    # ---- helpers ---------------------------------------------------------------------------------

    async def _until_stopped(self, aw: Awaitable[T]) -> T | _Stopped:
        """Await `aw` unless `stop()` comes first (then `aw` is cancelled)."""
        work = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([work, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not work.done():
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
        if work.cancelled() or not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return _STOPPED
        return work.result()


def _check_prefixes(prefixes: Sequence[str]) -> None:
    if not prefixes:
        raise ValueError("a syncer needs at least one prefix")
    for a in prefixes:
        for b in prefixes:
            if a is not b and b.startswith(a):
                raise ValueError(f"prefixes {a!r} and {b!r} overlap")
