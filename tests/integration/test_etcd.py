"""`EtcdDatastore` and the syncer against a real etcd server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcrypt.adapters.etcd import EtcdDatastore
from meshcrypt.datastore.syncer import Backoff, Snapshot, Syncer
from meshcrypt.model.errors import DatastoreUnavailable
from meshcrypt.ports import EventKind, WatchEvent
from tests.contract.checks_datastore import CHECKS, Check, DatastoreEnv, watching

from .etcd import EtcdServer, free_port, running_etcd

pytestmark = pytest.mark.integration

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One server for the checks that do not stop it (each check writes under its own prefix)."""
    with running_etcd(tmp_path_factory.mktemp("etcd-shared")) as server:
        yield server


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A server of the test's own, which the test may stop and start."""
    with running_etcd(tmp_path) as server:
        yield server


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_contract(shared_etcd: EtcdServer, check: Check) -> None:
    async def run() -> None:
        ds = EtcdDatastore([shared_etcd.endpoint])
        try:
            await check(DatastoreEnv(ds, f"/contract/{next(_prefixes)}/", shared_etcd.compact))
        finally:
            await ds.close()

    asyncio.run(run())


# ---- failures and endpoints ----------------------------------------------------------------------


def test_first_endpoint_dead_reads_fail_over_and_later_calls_stay(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def run() -> None:
        ds = EtcdDatastore([dead, etcd.endpoint], timeout=2)
        try:
            started = time.monotonic()
            assert await ds.get("/k") is None  # tried the dead one, then the live one
            assert time.monotonic() - started < 1.0
            assert ds.endpoint == etcd.endpoint
            assert await ds.txn({}, {"/k": b"v"})
        finally:
            await ds.close()

    asyncio.run(run())


def test_a_transaction_on_a_dead_endpoint_fails_fast_and_the_next_call_rotates(
    etcd: EtcdServer,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def run() -> None:
        ds = EtcdDatastore([dead, etcd.endpoint], timeout=2)
        try:
            started = time.monotonic()
            with pytest.raises(DatastoreUnavailable) as caught:
                await ds.txn({}, {"/k": b"v"})  # a write is never re-sent by the adapter
            assert time.monotonic() - started < 1.0
            assert dead in str(caught.value)
            assert caught.value.__cause__ is not None
            assert await ds.txn({}, {"/k": b"v"})
            # And a watch on the dead endpoint: unavailable, then the live one works.
            ds2 = EtcdDatastore([dead, etcd.endpoint], timeout=2)
            try:
                with pytest.raises(DatastoreUnavailable):
                    await anext(ds2.watch_prefix("/", 1))
                async with watching(ds2.watch_prefix("/", 1)) as events:
                    assert (await asyncio.wait_for(anext(events), 5)).key == "/k"
            finally:
                await ds2.close()
        finally:
            await ds.close()

    asyncio.run(run())


def test_reads_move_to_the_next_endpoint_when_the_current_one_dies(tmp_path: Path) -> None:
    """Two endpoints (two one-member clusters here, told apart by their data)."""
    with running_etcd(tmp_path, "a") as a, running_etcd(tmp_path, "b") as b:
        a.put("/who", "a")
        b.put("/who", "b")

        async def run() -> None:
            ds = EtcdDatastore([a.endpoint, b.endpoint], timeout=2)
            try:
                kv = await ds.get("/who")
                assert kv is not None and kv.value == b"a"
                a.stop()
                kv = await ds.get("/who")
                assert kv is not None and kv.value == b"b"
                assert ds.endpoint == b.endpoint
                a.start()
                kv = await ds.get("/who")  # stays on b while b answers
                assert kv is not None and kv.value == b"b"
                b.stop()
                kv = await ds.get("/who")  # round robin: back to a
                assert kv is not None and kv.value == b"a"
            finally:
                await ds.close()

        asyncio.run(run())


def test_etcd_stopped_and_restarted(etcd: EtcdServer) -> None:
    """Calls fail fast while etcd is down, a live watch breaks, and the first call after the restart
    works (no gRPC reconnect backoff in the way)."""

    async def run() -> None:
        ds = EtcdDatastore([etcd.endpoint], timeout=2)
        try:
            rev = etcd.put("/w/a", "1")
            async with watching(ds.watch_prefix("/w/", rev)) as events:
                assert (await asyncio.wait_for(anext(events), 5)).mod_revision == rev
                pending = asyncio.ensure_future(anext(events))
                await asyncio.sleep(0.1)
                etcd.stop()
                with pytest.raises(DatastoreUnavailable):
                    await asyncio.wait_for(pending, 5)
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(DatastoreUnavailable):
                    await ds.list_prefix("/w/")
                assert time.monotonic() - started < 1.0
            await asyncio.sleep(3)  # long enough for gRPC's own backoff to have grown
            etcd.start()
            kvs, _ = await ds.list_prefix("/w/")
            assert [kv.value for kv in kvs] == [b"1"]
        finally:
            await ds.close()

    asyncio.run(run())


def test_listing_at_a_compacted_revision_starts_over(etcd: EtcdServer) -> None:
    """A listing pages at the revision of its first page; compaction in between → a fresh listing."""

    async def run() -> None:
        ds = EtcdDatastore([etcd.endpoint], page_size=10)
        compacted = False
        real_list_pages = ds._list_pages

        async def list_pages_then_compact(conn, prefix):  # compact after the first page
            nonlocal compacted
            if not compacted:
                compacted = True
                etcd.put("/l/late", "x")
                original = conn.kv.Range

                async def range_once(request, **kwargs):
                    response = await original(request, **kwargs)
                    etcd.put("/l/later", "y")
                    etcd.compact()
                    conn.client.kvstub.Range = original
                    return response

                conn.client.kvstub.Range = range_once
            return await real_list_pages(conn, prefix)

        ds._list_pages = list_pages_then_compact  # type: ignore[method-assign]
        try:
            for i in range(25):
                etcd.put(f"/l/{i:02d}", "v")
            kvs, revision = await ds.list_prefix("/l/")
            assert compacted
            assert len(kvs) == 27 and revision == etcd.revision()
        finally:
            await ds.close()

    asyncio.run(run())


def test_cancelled_watches_leave_no_tasks(shared_etcd: EtcdServer) -> None:
    async def run() -> None:
        ds = EtcdDatastore([shared_etcd.endpoint])
        try:
            await ds.get("/warm-up")
            before = len(asyncio.all_tasks())
            for _ in range(50):
                consumer = asyncio.ensure_future(anext(ds.watch_prefix("/nothing/", 0)))
                await asyncio.sleep(0.005)
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
            await asyncio.sleep(0.1)
            assert len(asyncio.all_tasks()) == before
        finally:
            await ds.close()

    asyncio.run(run())


def test_close_ends_calls_in_flight_with_unavailable_not_a_cancellation(
    shared_etcd: EtcdServer,
) -> None:
    async def run() -> None:
        ds = EtcdDatastore([shared_etcd.endpoint])
        watch = asyncio.ensure_future(anext(ds.watch_prefix("/closing/", 0)))
        await asyncio.sleep(0.2)
        await ds.close()
        with pytest.raises(DatastoreUnavailable, match="closed"):
            await asyncio.wait_for(watch, 5)
        with pytest.raises(RuntimeError):
            await ds.get("/k")

    asyncio.run(run())


# ---- the syncer ----------------------------------------------------------------------------------


class _Mirror:
    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.snapshots: list[Snapshot] = []

    def on_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        self.state = {key: kv.value for key, kv in snapshot.kvs.items()}

    def on_event(self, event: WatchEvent) -> None:
        if event.kind is EventKind.PUT:
            self.state[event.key] = event.value
        else:
            self.state.pop(event.key, None)


async def _converged(mirror: _Mirror, etcd: EtcdServer, ds: EtcdDatastore, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        truth: dict[str, bytes] = {}
        for prefix in SYNC_PREFIXES:
            kvs, _ = await ds.list_prefix(prefix)
            truth.update((kv.key, kv.value) for kv in kvs)
        if mirror.state == truth:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"mirror {mirror.state} != etcd {truth}")
        await asyncio.sleep(0.05)


SYNC_PREFIXES = ("/calico/resources/v3/projectcalico.org/nodes/", "/calico/ipam/v2/assignment/")


def test_syncer_across_an_etcd_restart_with_writes_and_a_compaction(etcd: EtcdServer) -> None:
    nodes, blocks = SYNC_PREFIXES

    async def run() -> None:
        ds = EtcdDatastore([etcd.endpoint], timeout=2)
        reader = EtcdDatastore([etcd.endpoint], timeout=2)
        mirror = _Mirror()
        # Retries at 1.5 s intervals: etcd is down for 3 s, and the writes after its restart land
        # before the syncer's next attempt.
        syncer = Syncer(
            ds, mirror.on_snapshot, mirror.on_event, SYNC_PREFIXES,
            backoff=Backoff(initial=1.5, maximum=1.5, jitter=0),
        )  # fmt: skip
        etcd.put(nodes + "keep", "0")
        etcd.put(nodes + "change", "0")
        etcd.put(nodes + "delete", "0")
        task = asyncio.ensure_future(syncer.run())
        try:
            await asyncio.wait_for(syncer.synced.wait(), 10)
            etcd.put(blocks + "ipv4/block/10.65.0.0-26", "live")
            await _converged(mirror, etcd, reader, 5)
            etcd.stop()
            await asyncio.sleep(3)
            assert not syncer.synced.is_set()
            etcd.start()
            etcd.put(nodes + "change", "1")
            etcd.put(blocks + "ipv4/block/10.65.0.64-26", "new")
            etcd.delete(nodes + "delete")
            etcd.compact()
            await asyncio.wait_for(syncer.synced.wait(), 10)
            await _converged(mirror, etcd, reader, 5)
            # The watch after the re-list is live.
            etcd.put(nodes + "after", "2")
            await _converged(mirror, etcd, reader, 5)
            assert nodes + "delete" not in mirror.state
            assert len(mirror.snapshots) >= 2
        finally:
            syncer.stop()
            await asyncio.wait_for(task, 10)
            await ds.close()
            await reader.close()

    asyncio.run(run())


# ---- timings -------------------------------------------------------------------------------------


def test_timings_list_10000_keys_and_watch_throughput(etcd: EtcdServer) -> None:
    """Loose bounds; the figures are printed (pytest -s) for the report."""
    value = json.dumps({"kind": "Node", "spec": {"pad": "x" * 600}}).encode()

    async def run() -> None:
        ds = EtcdDatastore([etcd.endpoint])
        try:
            prefix = "/bench/"
            keys = [f"{prefix}{i:05d}" for i in range(10_000)]
            start = (await ds.list_prefix(prefix))[1] + 1
            received = 0
            done = asyncio.Event()

            async def consume() -> None:
                nonlocal received
                async with watching(ds.watch_prefix(prefix, start)) as events:
                    async for _ in events:
                        received += 1
                        if received == len(keys):
                            done.set()
                            return

            watcher = asyncio.ensure_future(consume())
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            for i in range(0, len(keys), 100):
                assert await ds.txn({}, dict.fromkeys(keys[i : i + 100], value))
            t_written = time.monotonic()
            await asyncio.wait_for(done.wait(), 60)
            t_watched = time.monotonic()
            await watcher
            lists = []
            for _ in range(3):
                t = time.monotonic()
                kvs, _ = await ds.list_prefix(prefix)
                lists.append(time.monotonic() - t)
                assert len(kvs) == len(keys)
            t = time.monotonic()
            for i in range(200):
                assert await ds.txn({}, {f"/single/{i}": value})
            single = (time.monotonic() - t) / 200
            print(
                f"\netcd timings: write 10000 keys in txns of 100: {t_written - t0:.2f} s; "
                f"all 10000 watch events by {t_watched - t0:.2f} s "
                f"({len(keys) / (t_watched - t0):.0f} events/s); "
                f"list 10000 keys ({len(value)} B each): median {sorted(lists)[1] * 1000:.0f} ms; "
                f"single-key txn: {single * 1000:.2f} ms"
            )
            assert sorted(lists)[1] < 5.0
        finally:
            await ds.close()

    asyncio.run(run())


def test_a_slow_first_connection_is_waited_for(etcd: EtcdServer) -> None:
    """Every SYN to etcd is dropped for half a second (as while a WireGuard handshake is retried on
    the way): the kernel sends the SYN again after 1 s and the call succeeds then. gRPC gives a
    connection attempt at least `grpc.min_reconnect_backoff_ms`; at 100 ms the call failed."""
    port = int(etcd.endpoint.rsplit(":", 1)[1])
    table = f"mctestsyn{port}"
    rules = (
        f"add table inet {table}\n"
        f"add chain inet {table} out {{ type filter hook output priority 0 ; }}\n"
        f"add rule inet {table} out tcp dport {port} tcp flags syn drop\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)

    def open_the_path() -> None:
        subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True, check=False)

    async def run() -> None:
        ds = EtcdDatastore([etcd.endpoint], timeout=5)
        try:
            call = asyncio.ensure_future(ds.get("/slow"))
            await asyncio.sleep(0.5)
            open_the_path()
            started = time.monotonic()
            assert await call is None
            assert time.monotonic() - started < 4.5
        finally:
            await ds.close()

    try:
        asyncio.run(run())
    finally:
        open_the_path()
