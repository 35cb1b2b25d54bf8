"""A watch cancelled at the moment its create response arrives must end, not wait for events.

Python 3.11's `asyncio.wait_for` returns the inner result when the inner call completes in the same
loop iteration as the cancellation of the waiting task, and the cancellation is lost: the watch
then awaited its next event forever (seen as a hung test run). The adapter uses `asyncio.timeout`.
The gRPC stream is replaced by a stand-in so the two can be made to coincide exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aetcd import rpc

from meshcrypt.adapters import etcd
from meshcrypt.adapters.etcd import EtcdDatastore


class _Stream:
    """Answers the first read when the test says so; every later read waits forever."""

    def __init__(self) -> None:
        self.first: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.reads = 0
        self.cancelled = False

    async def write(self, _request: object) -> None:
        return None

    async def read(self) -> Any:
        self.reads += 1
        if self.reads == 1:
            return await self.first
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def cancel(self) -> None:
        self.cancelled = True


class _Rpc:
    """aetcd's `rpc` module with the Watch stub replaced."""

    def __init__(self, stub: type) -> None:
        self.WatchStub = stub

    def __getattr__(self, name: str) -> Any:
        return getattr(rpc, name)


def test_a_cancellation_as_the_watch_is_created_ends_the_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def run() -> None:
        stream = _Stream()

        class _Stub:
            def __init__(self, _channel: object) -> None:
                pass

            def Watch(self, **_kwargs: object) -> _Stream:  # gRPC stub method name
                return stream

        monkeypatch.setattr(etcd, "rpc", _Rpc(_Stub))
        ds = EtcdDatastore(["http://127.0.0.1:9"])  # never contacted: the stub stands in
        try:
            consumer = asyncio.ensure_future(anext(ds.watch_prefix("/nothing/", 0)))
            while stream.reads == 0:
                await asyncio.sleep(0)
            for _ in range(3):  # let the read settle on its future
                await asyncio.sleep(0)
            stream.first.set_result(rpc.WatchResponse())  # created, no events
            consumer.cancel()  # ... in the same loop iteration
            done, _ = await asyncio.wait([consumer], timeout=2)
            assert done, "the cancelled watch kept waiting for events"
            with contextlib.suppress(asyncio.CancelledError):
                consumer.result()
            assert consumer.cancelled()
            assert stream.cancelled
        finally:
            await ds.close()

    asyncio.run(run())
