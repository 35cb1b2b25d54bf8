from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from meshcrypt.datastore.syncer import Backoff, Snapshot, Syncer, diff_snapshot
from meshcrypt.fakes import DatastoreOp, FakeDatastore
from meshcrypt.model.errors import RevisionCompacted
from meshcrypt.ports import EventKind, KeyValue, WatchEvent

PREFIXES = ("/calico/a/", "/calico/b/")


class Consumer:
    """Applies what the syncer delivers the way the agent will: snapshots by their diff."""

    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.snapshots: list[Snapshot] = []
        self.events: list[WatchEvent] = []

    def on_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        for kv in snapshot.changed:
            self.state[kv.key] = kv.value
        for key in snapshot.removed:
            del self.state[key]
        assert self.state == {key: kv.value for key, kv in snapshot.kvs.items()}

    def on_event(self, event: WatchEvent) -> None:
        self.events.append(event)
        if event.kind is EventKind.PUT:
            self.state[event.key] = event.value
        else:
            self.state.pop(event.key, None)


def _store_view(fake: FakeDatastore) -> dict[str, bytes]:
    return {k: v for k, v in fake.snapshot().items() if k.startswith(PREFIXES)}


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


Scenario = Callable[[FakeDatastore, Syncer, Consumer], Awaitable[None]]


def _run(scenario: Scenario, fake: FakeDatastore | None = None, **kwargs: object) -> Consumer:
    consumer = Consumer()

    async def main() -> None:
        store = fake if fake is not None else FakeDatastore()
        syncer = Syncer(
            store,
            consumer.on_snapshot,
            consumer.on_event,
            PREFIXES,
            **kwargs,  # type: ignore[arg-type]
        )
        task = asyncio.ensure_future(syncer.run())
        try:
            await scenario(store, syncer, consumer)
        finally:
            syncer.stop()
            await asyncio.wait_for(task, 5)
        assert store.watch_count == 0, "the syncer left a watch open"
        assert not syncer.synced.is_set()

    asyncio.run(main())
    return consumer


def _fast() -> Backoff:
    return Backoff(initial=0.01, maximum=0.05)


def test_first_snapshot_then_events() -> None:
    fake = FakeDatastore()
    fake.server_put("/calico/a/1", b"a1")
    fake.server_put("/calico/b/1", b"b1")
    fake.server_put("/calico/c/1", b"not watched")

    async def scenario(fake: FakeDatastore, syncer: Syncer, consumer: Consumer) -> None:
        await asyncio.wait_for(syncer.synced.wait(), 5)
        [first] = consumer.snapshots
        assert first.first and first.removed == ()
        assert set(first.kvs) == {"/calico/a/1", "/calico/b/1"}
        assert first.revision == fake.revision
        rev = fake.server_put("/calico/b/2", b"b2")
        fake.server_delete("/calico/a/1")
        fake.server_put("/calico/c/2", b"not watched")
        await _until(lambda: len(consumer.events) == 2)
        # Each prefix has its own watch: order holds within a prefix, not across prefixes.
        assert set(consumer.events) == {
            WatchEvent(EventKind.PUT, "/calico/b/2", b"b2", rev),
            WatchEvent(EventKind.DELETE, "/calico/a/1", b"", rev + 1),
        }
        await asyncio.sleep(0.05)
        assert len(consumer.events) == 2
        assert consumer.state == _store_view(fake)
        assert syncer.revision == fake.revision - 1  # the last write was not watched

    consumer = _run(scenario, fake)
    assert len(consumer.snapshots) == 1


def test_outage_with_writes_and_deletes_is_reconciled_by_the_next_snapshot() -> None:
    fake = FakeDatastore()
    for name in ("keep", "change", "delete"):
        fake.server_put(f"/calico/a/{name}", b"0")

    async def scenario(fake: FakeDatastore, syncer: Syncer, consumer: Consumer) -> None:
        await asyncio.wait_for(syncer.synced.wait(), 5)
        fake.go_down()
        await _until(lambda: not syncer.synced.is_set())
        fake.server_put("/calico/a/change", b"1")
        fake.server_put("/calico/b/new", b"1")
        fake.server_delete("/calico/a/delete")
        await asyncio.sleep(0.1)  # several failed re-lists
        assert fake.calls[DatastoreOp.LIST] > 2
        fake.come_up()
        await asyncio.wait_for(syncer.synced.wait(), 5)
        second = consumer.snapshots[-1]
        assert not second.first
        assert [kv.key for kv in second.changed] == ["/calico/a/change", "/calico/b/new"]
        assert second.removed == ("/calico/a/delete",)
        assert consumer.state == _store_view(fake)
        # The new watch carries on from the snapshot.
        fake.server_put("/calico/a/after", b"2")
        await _until(lambda: consumer.state == _store_view(fake))

    consumer = _run(scenario, fake, backoff=_fast())
    assert len(consumer.snapshots) == 2


def test_compaction_during_an_outage() -> None:
    async def scenario(fake: FakeDatastore, syncer: Syncer, consumer: Consumer) -> None:
        fake.server_put("/calico/a/x", b"0")
        await asyncio.wait_for(syncer.synced.wait(), 5)
        await _until(lambda: len(consumer.events) + len(consumer.snapshots[-1].kvs) == 1)
        fake.go_down()
        fake.server_put("/calico/a/x", b"1")
        fake.server_put("/calico/a/y", b"1")
        fake.compact(fake.revision)
        fake.come_up()
        await _until(lambda: consumer.state == _store_view(fake) and syncer.synced.is_set())

    _run(scenario, backoff=_fast())


def test_compaction_while_watching_changes_nothing() -> None:
    async def scenario(fake: FakeDatastore, syncer: Syncer, consumer: Consumer) -> None:
        await asyncio.wait_for(syncer.synced.wait(), 5)
        fake.server_put("/calico/a/x", b"1")
        await _until(lambda: len(consumer.events) == 1)
        fake.compact(fake.revision)
        fake.server_put("/calico/a/x", b"2")
        await _until(lambda: len(consumer.events) == 2)
        assert consumer.state == {"/calico/a/x": b"2"}

    consumer = _run(scenario, backoff=_fast())
    assert len(consumer.snapshots) == 1


def test_watch_from_a_compacted_revision_lists_again() -> None:
    fake = FakeDatastore()
    fake.server_put("/calico/a/x", b"1")
    fake.fail_next(DatastoreOp.WATCH, RevisionCompacted(3))

    async def scenario(fake: FakeDatastore, syncer: Syncer, consumer: Consumer) -> None:
        await _until(lambda: len(consumer.snapshots) == 2 and syncer.synced.is_set())
        fake.server_put("/calico/b/y", b"2")
        await _until(lambda: consumer.state == _store_view(fake))
        assert consumer.snapshots[1].changed == ()  # nothing changed in between

    _run(scenario, fake, backoff=_fast())


def test_backoff_slows_retries_while_down() -> None:
    async def scenario(fake: FakeDatastore, syncer: Syncer, consumer: Consumer) -> None:
        await asyncio.wait_for(syncer.synced.wait(), 5)
        lists = fake.calls[DatastoreOp.LIST]
        fake.go_down()
        await asyncio.sleep(1.0)
        # 0.1 + 0.2 + 0.4 (±20 %) fit in a second, 0.8 more do not: at most 4 attempts per prefix.
        attempts = fake.calls[DatastoreOp.LIST] - lists
        assert 2 <= attempts <= 4, attempts
        fake.come_up()
        await asyncio.wait_for(syncer.synced.wait(), 5)

    _run(scenario)


def test_stop_while_down_returns_promptly() -> None:
    async def scenario(fake: FakeDatastore, syncer: Syncer, consumer: Consumer) -> None:
        await asyncio.wait_for(syncer.synced.wait(), 5)
        fake.go_down()
        await asyncio.sleep(0.5)  # now sleeping in a backoff of about 0.4 s or more

    _run(scenario, backoff=Backoff(initial=3.0, maximum=3.0))


def test_a_consumer_error_ends_run_and_closes_watches() -> None:
    async def main() -> None:
        fake = FakeDatastore()

        def boom(event: WatchEvent) -> None:
            raise KeyError(event.key)

        syncer = Syncer(fake, lambda s: None, boom, PREFIXES)
        task = asyncio.ensure_future(syncer.run())
        await asyncio.wait_for(syncer.synced.wait(), 5)
        fake.server_put("/calico/b/x", b"1")
        with pytest.raises(KeyError):
            await asyncio.wait_for(task, 5)
        assert fake.watch_count == 0

    asyncio.run(main())


def test_no_event_is_lost_under_churn_outages_and_compactions() -> None:
    rng = random.Random(4)

    async def scenario(fake: FakeDatastore, syncer: Syncer, consumer: Consumer) -> None:
        keys = [f"/calico/{p}/{i}" for p in "ab" for i in range(8)]
        for step in range(600):
            if rng.random() < 0.6:
                fake.server_put(rng.choice(keys), str(step).encode())
            else:
                fake.server_delete(rng.choice(keys))
            roll = rng.random()
            if roll < 0.02:
                fake.go_down() if not fake.is_down else fake.come_up()
            elif roll < 0.04 and fake.revision > fake.compacted_revision:
                fake.compact(fake.revision)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.choice([0, 0, 0.001, 0.02]))
        fake.come_up()
        await _until(lambda: syncer.synced.is_set() and consumer.state == _store_view(fake))

    consumer = _run(scenario, backoff=_fast())
    assert len(consumer.snapshots) > 1  # the outages did force re-lists


def test_overlapping_or_no_prefixes_are_refused() -> None:
    fake = FakeDatastore()
    with pytest.raises(ValueError, match="overlap"):
        Syncer(fake, lambda s: None, lambda e: None, ["/calico/", "/calico/a/"])
    with pytest.raises(ValueError):
        Syncer(fake, lambda s: None, lambda e: None, [])


def test_diff_snapshot() -> None:
    def kv(key: str, rev: int) -> KeyValue:
        return KeyValue(key, b"", rev, 1)

    current = {"/a": kv("/a", 5), "/b": kv("/b", 2), "/c": kv("/c", 9)}
    diff = diff_snapshot({"/a": 5, "/b": 1, "/gone": 3}, current)
    assert diff.upserts == [current["/b"], current["/c"]]
    assert diff.deletes == ["/gone"]
    assert diff_snapshot({}, {}) == ([], [])


def test_backoff_sequence() -> None:
    backoff = Backoff(initial=0.1, maximum=5.0, jitter=0.0)
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)
    low = Backoff(initial=1.0, maximum=5.0, jitter=0.2, rng=lambda: 0.0)
    high = Backoff(initial=1.0, maximum=5.0, jitter=0.2, rng=lambda: 1.0)
    assert low.next_delay() == pytest.approx(0.8)
    assert high.next_delay() == pytest.approx(1.2)
    with pytest.raises(ValueError):
        Backoff(initial=0)
