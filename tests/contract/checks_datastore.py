"""`ports.Datastore` behaviour that real etcd and `FakeDatastore` must share.

Each check is a coroutine taking a `DatastoreEnv`: the datastore, a key prefix no other check uses
(so they can share one etcd server, in any order) and a way to compact the store. They assert only
what etcd 3.4 does. `test_datastore_contract.py` runs `CHECKS` against the fake;
`tests/integration/test_etcd.py` runs the same list against a real etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from meshcrypt.model.errors import RevisionCompacted
from meshcrypt.ports import Datastore, EventKind, WatchEvent

WAIT = 5.0  # seconds a watch event may take


@dataclass(frozen=True)
class DatastoreEnv:
    datastore: Datastore
    prefix: str  # ends with "/"; only this check writes under it
    compact: Callable[[int], object]  # compact the store's history below a revision


# ---- helpers -------------------------------------------------------------------------------------


async def _put(ds: Datastore, key: str, value: bytes) -> int:
    """Unconditional put; the key's new mod_revision."""
    assert await ds.txn({}, {key: value})
    kv = await ds.get(key)
    assert kv is not None
    return kv.mod_revision


async def _revision(ds: Datastore, prefix: str) -> int:
    return (await ds.list_prefix(prefix))[1]


async def close_watch(events: AsyncIterator[WatchEvent]) -> None:
    """Close a watch at once (an async generator's `aclose`), not when it is garbage-collected."""
    if isinstance(events, AsyncGenerator):
        await events.aclose()


@contextlib.asynccontextmanager
async def watching(events: AsyncIterator[WatchEvent]) -> AsyncIterator[AsyncIterator[WatchEvent]]:
    try:
        yield events
    finally:
        await close_watch(events)


async def _next(events: AsyncIterator[WatchEvent]) -> WatchEvent:
    return await asyncio.wait_for(anext(events), WAIT)


async def _no_event(events: AsyncIterator[WatchEvent], seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(events), seconds)


# ---- key/value and transactions ------------------------------------------------------------------


async def check_put_then_get(env: DatastoreEnv) -> None:
    ds, key = env.datastore, env.prefix + "a"
    assert await ds.get(key) is None
    assert await ds.txn({}, {key: b'{"x":1}'})
    kv = await ds.get(key)
    assert kv is not None
    assert (kv.key, kv.value) == (key, b'{"x":1}')
    assert kv.mod_revision == kv.create_revision > 0


async def check_binary_values_round_trip(env: DatastoreEnv) -> None:
    ds, key = env.datastore, env.prefix + "bin"
    value = bytes(range(256)) + b"\xff\xfe"
    await _put(ds, key, value)
    kv = await ds.get(key)
    assert kv is not None and kv.value == value


async def check_create_if_absent(env: DatastoreEnv) -> None:
    ds, key = env.datastore, env.prefix + "claim"
    assert await ds.txn({key: 0}, {key: b"first"})
    assert not await ds.txn({key: 0}, {key: b"second"})
    kv = await ds.get(key)
    assert kv is not None and kv.value == b"first"


async def check_compare_and_swap(env: DatastoreEnv) -> None:
    ds, key = env.datastore, env.prefix + "cas"
    first = await _put(ds, key, b"1")
    assert await ds.txn({key: first}, {key: b"2"})
    kv = await ds.get(key)
    assert kv is not None
    assert kv.value == b"2" and kv.mod_revision > first and kv.create_revision == first
    # The revision we read before is stale now: nothing changes.
    assert not await ds.txn({key: first}, {key: b"3"})
    after = await ds.get(key)
    assert after == kv


async def check_expect_absent_key_with_revision_fails(env: DatastoreEnv) -> None:
    ds, key = env.datastore, env.prefix + "gone"
    assert not await ds.txn({key: 5}, {key: b"x"})
    assert await ds.get(key) is None


async def check_multi_key_transaction_is_atomic(env: DatastoreEnv) -> None:
    ds, p = env.datastore, env.prefix
    rev_a = await _put(ds, p + "a", b"a")
    await _put(ds, p + "a", b"a2")  # rev_a is stale now
    assert not await ds.txn({p + "a": rev_a}, {p + "b": b"b", p + "c": b"c"}, [p + "a"])
    assert await ds.get(p + "b") is None and await ds.get(p + "c") is None
    current = await ds.get(p + "a")
    assert current is not None
    assert await ds.txn(
        {p + "a": current.mod_revision, p + "b": 0}, {p + "b": b"b", p + "c": b"c"}, [p + "a"]
    )
    b, c = await ds.get(p + "b"), await ds.get(p + "c")
    assert await ds.get(p + "a") is None
    assert b is not None and c is not None
    assert b.mod_revision == c.mod_revision == current.mod_revision + 1


async def check_delete_and_recreate(env: DatastoreEnv) -> None:
    ds, key = env.datastore, env.prefix + "d"
    created = await _put(ds, key, b"1")
    assert await ds.txn({key: created}, {}, [key])
    assert await ds.get(key) is None
    again = await _put(ds, key, b"2")
    kv = await ds.get(key)
    assert kv is not None and kv.create_revision == again > created


async def check_transaction_without_change_keeps_revision(env: DatastoreEnv) -> None:
    ds, p = env.datastore, env.prefix
    await _put(ds, p + "k", b"v")
    before = await _revision(ds, p)
    assert not await ds.txn({p + "k": 1}, {p + "k": b"w"})  # failed compare
    assert await ds.txn(
        {}, {}, [p + "missing"]
    )  # delete of a missing key: succeeds, changes nothing
    assert await _revision(ds, p) == before


async def check_one_key_twice_in_a_transaction_is_refused(env: DatastoreEnv) -> None:
    ds, key = env.datastore, env.prefix + "dup"
    with pytest.raises(ValueError):
        await ds.txn({}, {key: b"1"}, [key])
    assert await ds.get(key) is None


# ---- listing -------------------------------------------------------------------------------------


async def check_prefix_listing(env: DatastoreEnv) -> None:
    ds, p = env.datastore, env.prefix
    await _put(ds, p + "list/b", b"2")
    await _put(ds, p + "list/a", b"1")
    await _put(ds, p + "list/c/d", b"3")
    await _put(ds, p + "listx", b"sibling")  # shares the text but not the "/": not listed
    last = await _put(ds, p + "other", b"x")
    kvs, revision = await ds.list_prefix(p + "list/")
    assert [(kv.key, kv.value) for kv in kvs] == [
        (p + "list/a", b"1"),
        (p + "list/b", b"2"),
        (p + "list/c/d", b"3"),
    ]
    assert revision >= last
    assert all(0 < kv.create_revision <= kv.mod_revision <= revision for kv in kvs)
    empty, empty_revision = await ds.list_prefix(p + "nothing/")
    assert empty == [] and empty_revision >= revision


async def check_listing_many_keys(env: DatastoreEnv) -> None:
    """More keys than one etcd page (the adapter pages by 1000): all come back, once, in order."""
    ds, p = env.datastore, env.prefix
    keys = [f"{p}many/{i:05d}" for i in range(2500)]
    for start in range(0, len(keys), 100):
        assert await ds.txn({}, {key: key.encode() for key in keys[start : start + 100]})
    kvs, _ = await ds.list_prefix(p + "many/")
    assert [kv.key for kv in kvs] == keys
    assert all(kv.value == kv.key.encode() for kv in kvs)


# ---- watching ------------------------------------------------------------------------------------


async def check_watch_replays_history_then_live_events(env: DatastoreEnv) -> None:
    ds, p = env.datastore, env.prefix + "w/"
    r1 = await _put(ds, p + "a", b"1")
    r2 = await _put(ds, p + "b", b"2")
    await _put(ds, env.prefix + "outside", b"x")
    a = await ds.get(p + "a")
    assert a is not None
    assert await ds.txn({p + "a": a.mod_revision}, {}, [p + "a"])
    r3 = await _revision(ds, p)
    async with watching(ds.watch_prefix(p, r1)) as events:
        assert await _next(events) == WatchEvent(EventKind.PUT, p + "a", b"1", r1)
        assert await _next(events) == WatchEvent(EventKind.PUT, p + "b", b"2", r2)
        assert await _next(events) == WatchEvent(EventKind.DELETE, p + "a", b"", r3)
        r4 = await _put(ds, p + "c", b"3")
        assert await _next(events) == WatchEvent(EventKind.PUT, p + "c", b"3", r4)
        await _no_event(events)


async def check_watch_delivers_a_transaction_in_order(env: DatastoreEnv) -> None:
    ds, p = env.datastore, env.prefix + "t/"
    await _put(ds, p + "old", b"0")
    start = await _revision(ds, p) + 1
    async with watching(ds.watch_prefix(p, start)) as events:
        assert await ds.txn({}, {p + "x": b"1", p + "y": b"2"}, [p + "old"])
        got = [await _next(events) for _ in range(3)]
    assert [(e.kind, e.key) for e in got] == [
        (EventKind.PUT, p + "x"),
        (EventKind.PUT, p + "y"),
        (EventKind.DELETE, p + "old"),
    ]
    assert got[0].mod_revision == got[1].mod_revision == got[2].mod_revision == start


async def check_watch_from_zero_starts_after_now(env: DatastoreEnv) -> None:
    ds, p = env.datastore, env.prefix + "z/"
    await _put(ds, p + "before", b"0")
    async with watching(ds.watch_prefix(p, 0)) as events:
        # The watch exists once its first event is awaited; write while that await is pending.
        pending = asyncio.ensure_future(_next(events))
        await asyncio.sleep(0.2)
        rev = await _put(ds, p + "after", b"1")
        assert await pending == WatchEvent(EventKind.PUT, p + "after", b"1", rev)


async def check_watch_from_a_future_revision_waits_for_it(env: DatastoreEnv) -> None:
    ds, p = env.datastore, env.prefix + "f/"
    now = await _revision(ds, p)
    async with watching(ds.watch_prefix(p, now + 2)) as events:
        await _put(ds, p + "skipped", b"1")  # now + 1
        rev = await _put(ds, p + "seen", b"2")  # now + 2
        assert await _next(events) == WatchEvent(EventKind.PUT, p + "seen", b"2", rev)


async def check_watch_from_a_compacted_revision(env: DatastoreEnv) -> None:
    ds, p = env.datastore, env.prefix + "c/"
    first = await _put(ds, p + "a", b"1")
    await _put(ds, p + "a", b"2")
    last = await _put(ds, p + "a", b"3")
    env.compact(last)
    with pytest.raises(RevisionCompacted) as caught:
        async with watching(ds.watch_prefix(p, first)) as events:
            await _next(events)
    assert caught.value.compact_revision == last
    # The compaction revision itself is still there.
    async with watching(ds.watch_prefix(p, last)) as events:
        assert await _next(events) == WatchEvent(EventKind.PUT, p + "a", b"3", last)
    # Listing is unaffected.
    kvs, _ = await ds.list_prefix(p)
    assert [kv.value for kv in kvs] == [b"3"]


async def check_closed_watch_leaves_the_store_usable(env: DatastoreEnv) -> None:
    ds, p = env.datastore, env.prefix + "cl/"
    for _ in range(20):
        start = await _revision(ds, p) + 1
        events = ds.watch_prefix(p, start)
        pending = asyncio.ensure_future(_next(events))
        await asyncio.sleep(0)
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
        await close_watch(events)
    rev = await _put(ds, p + "k", b"v")
    async with watching(ds.watch_prefix(p, rev)) as events:
        assert (await _next(events)).mod_revision == rev


Check = Callable[[DatastoreEnv], Awaitable[None]]

CHECKS: list[Check] = [
    check_put_then_get,
    check_binary_values_round_trip,
    check_create_if_absent,
    check_compare_and_swap,
    check_expect_absent_key_with_revision_fails,
    check_multi_key_transaction_is_atomic,
    check_delete_and_recreate,
    check_transaction_without_change_keeps_revision,
    check_one_key_twice_in_a_transaction_is_refused,
    check_prefix_listing,
    check_listing_many_keys,
    check_watch_replays_history_then_live_events,
    check_watch_delivers_a_transaction_in_order,
    check_watch_from_zero_starts_after_now,
    check_watch_from_a_future_revision_waits_for_it,
    check_watch_from_a_compacted_revision,
    check_closed_watch_leaves_the_store_usable,
]
