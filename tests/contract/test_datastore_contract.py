"""The shared datastore checks, run against `FakeDatastore` (`tests/integration/test_etcd.py` runs
them against a real etcd)."""

from __future__ import annotations

import asyncio

import pytest

from meshcrypt.fakes import FakeDatastore

from .checks_datastore import CHECKS, Check, DatastoreEnv


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_check(check: Check) -> None:
    async def run() -> None:
        fake = FakeDatastore()
        await check(DatastoreEnv(fake, "/contract/", fake.compact))
        assert fake.watch_count == 0, "a closed watch left its subscription behind"

    asyncio.run(run())


def test_checks_share_one_store() -> None:
    """On etcd the checks share one server; on the fake, in sequence, they must not disturb each other."""

    async def run() -> None:
        fake = FakeDatastore()
        for index, check in enumerate(CHECKS):
            await check(DatastoreEnv(fake, f"/contract/{index}/", fake.compact))

    asyncio.run(run())
