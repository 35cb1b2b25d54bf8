"""FakeDatastore's test controls (its port behaviour is checked by the contract suite)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine

import pytest

from meshcrypt.fakes import DatastoreOp, FakeDatastore
from meshcrypt.model.errors import DatastoreUnavailable, RevisionCompacted
from meshcrypt.ports import EventKind, WatchEvent
from tests.contract.checks_datastore import watching


def run(coro: Coroutine[object, object, None]) -> None:
    asyncio.run(coro)


def test_revisions_start_at_one_and_count_changes() -> None:
    fake = FakeDatastore()
    assert fake.revision == 1
    assert fake.server_put("/a", b"1") == 2
    assert fake.server_delete("/missing") == 2
    assert fake.server_delete("/a") == 3
    assert fake.snapshot() == {}


def test_down_store_refuses_every_call_and_breaks_live_watches() -> None:
    async def scenario() -> None:
        fake = FakeDatastore()
        fake.server_put("/w/a", b"1")
        async with watching(fake.watch_prefix("/w/", 1)) as events:
            assert (await anext(events)).key == "/w/a"
            fake.go_down()
            with pytest.raises(DatastoreUnavailable):
                await anext(events)
        for call in (fake.get("/w/a"), fake.list_prefix("/w/"), fake.txn({}, {"/w/b": b""})):
            with pytest.raises(DatastoreUnavailable):
                await call
        with pytest.raises(DatastoreUnavailable):
            await anext(fake.watch_prefix("/w/", 0))
        # Another member still writes; we see it once the store is back.
        rev = fake.server_put("/w/b", b"2")
        fake.come_up()
        kv = await fake.get("/w/b")
        assert kv is not None and kv.mod_revision == rev
        assert fake.watch_count == 0

    run(scenario())


def test_fail_next_txn_is_a_one_shot_conflict() -> None:
    async def scenario() -> None:
        fake = FakeDatastore()
        fake.fail_next(DatastoreOp.TXN)
        assert not await fake.txn({}, {"/k": b"1"})
        assert await fake.get("/k") is None
        assert await fake.txn({}, {"/k": b"1"})
        assert fake.calls[DatastoreOp.TXN] == 2

    run(scenario())


def test_fail_next_after_apply_commits_then_raises() -> None:
    async def scenario() -> None:
        fake = FakeDatastore()
        fake.fail_next(DatastoreOp.TXN, DatastoreUnavailable("lost reply"), after_apply=True)
        with pytest.raises(DatastoreUnavailable, match="lost reply"):
            await fake.txn({}, {"/k": b"1"})
        assert fake.snapshot() == {"/k": b"1"}

    run(scenario())


def test_fail_next_other_ops() -> None:
    async def scenario() -> None:
        fake = FakeDatastore()
        fake.fail_next(DatastoreOp.LIST)
        fake.fail_next(DatastoreOp.WATCH, RevisionCompacted(7))
        with pytest.raises(DatastoreUnavailable):
            await fake.list_prefix("/")
        assert (await fake.list_prefix("/"))[1] == 1
        with pytest.raises(RevisionCompacted):
            await anext(fake.watch_prefix("/", 1))
        with pytest.raises(ValueError):
            fake.fail_next(DatastoreOp.GET, DatastoreUnavailable("x"), after_apply=True)

    run(scenario())


def test_compaction_rules() -> None:
    fake = FakeDatastore()
    for i in range(3):
        fake.server_put("/k", str(i).encode())
    with pytest.raises(ValueError):
        fake.compact(fake.revision + 1)
    fake.compact(3)
    assert fake.compacted_revision == 3
    with pytest.raises(ValueError):
        fake.compact(3)


def test_live_watch_survives_compaction() -> None:
    async def scenario() -> None:
        fake = FakeDatastore()
        async with watching(fake.watch_prefix("/", 2)) as events:
            rev = fake.server_put("/a", b"1")
            assert await anext(events) == WatchEvent(EventKind.PUT, "/a", b"1", rev)
            fake.server_put("/a", b"2")
            fake.compact(fake.revision)
            rev = fake.server_put("/a", b"3")
            assert (await anext(events)).value == b"2"
            assert await anext(events) == WatchEvent(EventKind.PUT, "/a", b"3", rev)

    run(scenario())


def test_cancelled_watch_unsubscribes() -> None:
    async def scenario() -> None:
        fake = FakeDatastore()

        async def consume() -> None:
            async for _ in fake.watch_prefix("/", 0):
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.01)
        assert fake.watch_count == 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert fake.watch_count == 0

    run(scenario())


def test_closed_store_refuses_calls_and_ends_watches() -> None:
    async def scenario() -> None:
        fake = FakeDatastore()
        events = fake.watch_prefix("/", 0)
        pending = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0)
        await fake.close()
        with pytest.raises(DatastoreUnavailable):
            await pending
        with pytest.raises(RuntimeError):
            await fake.get("/k")

    run(scenario())
