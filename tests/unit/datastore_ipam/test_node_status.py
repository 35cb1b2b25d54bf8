"""meshcrypt.datastore.node_status: publishing the public keys with compare-and-swap."""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

import pytest

from meshcrypt.datastore import layout, registration
from meshcrypt.datastore.node_status import KeyPublisher, normalise_public_key
from meshcrypt.fakes.datastore import DatastoreOp, FakeDatastore
from meshcrypt.model.errors import DatastoreUnavailable, StatusPublishError
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import IPFamily

from .helpers import put_json, run, stored

V4, V6 = IPFamily.V4, IPFamily.V6
NODE_KEY = layout.node_key("node-a")
PRIVATE = PrivateKey.generate()
PUBLIC = PRIVATE.public_key().to_base64()
OTHER = PrivateKey.generate().public_key().to_base64()
FIELD = {V4: "wireguardPublicKey", V6: "wireguardPublicKeyV6"}


def registered() -> FakeDatastore:
    ds = FakeDatastore()
    run(registration.ensure_node(ds, "node-a", ipaddress.IPv4Interface("10.0.0.1/24"), None))
    return ds


@pytest.mark.parametrize("family", [V4, V6])
def test_publish_writes_the_key_of_its_family_only(family):
    ds = registered()
    publisher = KeyPublisher(ds, "node-a")

    assert run(publisher.publish(family, PUBLIC))

    status = stored(ds, NODE_KEY)["status"]
    assert status == {FIELD[family]: PUBLIC}


def test_publish_is_a_no_op_when_the_key_is_already_there():
    ds = registered()
    publisher = KeyPublisher(ds, "node-a")
    run(publisher.publish(V4, PUBLIC))
    revision = ds.revision
    assert not run(publisher.publish(V4, Key.from_base64(PUBLIC)))
    assert ds.revision == revision


def test_publish_keeps_every_other_field():
    ds = FakeDatastore()
    doc: dict[str, Any] = {
        "kind": "Node",
        "metadata": {"name": "node-a", "annotations": {"a": "b"}},
        "spec": {"bgp": {"ipv4Address": "10.0.0.1/24"}, "wireguard": {"x": 1}},
        "status": {"podCIDRs": ["10.244.0.0/24"], "wireguardPublicKeyV6": OTHER, "later": 1},
    }
    put_json(ds, NODE_KEY, doc)

    run(KeyPublisher(ds, "node-a").publish(V4, PUBLIC))

    doc["status"]["wireguardPublicKey"] = PUBLIC
    assert stored(ds, NODE_KEY) == doc


@pytest.mark.parametrize("empty", ["", None, Key.zero(), Key.zero().to_base64()])
def test_empty_or_zero_key_is_written_as_empty_string(empty):
    ds = registered()
    publisher = KeyPublisher(ds, "node-a")
    run(publisher.publish(V4, PUBLIC))

    assert run(publisher.publish(V4, empty))

    assert stored(ds, NODE_KEY)["status"]["wireguardPublicKey"] == ""


def test_empty_key_on_a_node_without_a_key_writes_nothing():
    ds = registered()
    revision = ds.revision
    assert not run(KeyPublisher(ds, "node-a").publish(V6, ""))
    assert ds.revision == revision


def test_an_overwritten_key_is_restored():
    ds = registered()
    publisher = KeyPublisher(ds, "node-a")
    run(publisher.publish(V4, PUBLIC))
    doc = stored(ds, NODE_KEY)
    doc["status"]["wireguardPublicKey"] = OTHER
    put_json(ds, NODE_KEY, doc)

    assert run(publisher.publish(V4, PUBLIC))
    assert stored(ds, NODE_KEY)["status"]["wireguardPublicKey"] == PUBLIC


def test_a_conflict_is_retried():
    ds = registered()
    ds.fail_next(DatastoreOp.TXN)
    ds.fail_next(DatastoreOp.TXN)

    assert run(KeyPublisher(ds, "node-a").publish(V4, PUBLIC))
    assert ds.calls[DatastoreOp.TXN] == 1 + 3  # registration, two conflicts, success


def test_three_conflicts_give_a_status_publish_error():
    ds = registered()
    for _ in range(3):
        ds.fail_next(DatastoreOp.TXN)

    with pytest.raises(StatusPublishError):
        run(KeyPublisher(ds, "node-a").publish(V4, PUBLIC))
    assert "status" not in stored(ds, NODE_KEY)


def test_datastore_failure_propagates_as_unavailable():
    ds = registered()
    ds.fail_next(DatastoreOp.GET)
    with pytest.raises(DatastoreUnavailable):
        run(KeyPublisher(ds, "node-a").publish(V4, PUBLIC))


def test_missing_node():
    ds = FakeDatastore()
    publisher = KeyPublisher(ds, "node-a")
    assert not run(publisher.publish(V4, ""))
    with pytest.raises(registration.NodeNotRegistered):
        run(publisher.publish(V4, PUBLIC))


class RefusesKeyWrites:
    """A datastore whose writes that change one status field fail while `refuse` is set."""

    def __init__(self, inner: FakeDatastore, field: str) -> None:
        self.inner = inner
        self.field = field
        self.refuse = True

    async def get(self, key):
        return await self.inner.get(key)

    async def list_prefix(self, prefix):
        return await self.inner.list_prefix(prefix)

    def watch_prefix(self, prefix, start_revision):
        return self.inner.watch_prefix(prefix, start_revision)

    async def txn(self, expect, puts, deletes=()):
        for key, value in puts.items():
            before = await self.inner.get(key)
            old = json.loads(before.value).get("status", {}) if before else {}
            if self.refuse and json.loads(value).get("status", {}).get(self.field) != old.get(
                self.field
            ):
                raise DatastoreUnavailable(f"write of {self.field} refused")
        return await self.inner.txn(expect, puts, deletes)

    async def close(self):
        await self.inner.close()


@pytest.mark.parametrize(("failing", "working"), [(V6, V4), (V4, V6)])
def test_one_failing_family_does_not_hold_back_the_other(failing, working):
    inner = registered()
    ds = RefusesKeyWrites(inner, FIELD[failing])
    publisher = KeyPublisher(ds, "node-a")
    keys = {failing: OTHER, working: PUBLIC}
    publisher.request(V4, keys[V4])
    publisher.request(V6, keys[V6])

    with pytest.raises(DatastoreUnavailable, match=FIELD[failing]):
        run(publisher.publish_pending())

    assert stored(inner, NODE_KEY)["status"] == {FIELD[working]: PUBLIC}
    assert publisher.pending == {failing: OTHER}

    ds.refuse = False
    run(publisher.publish_pending())
    assert stored(inner, NODE_KEY)["status"] == {FIELD[working]: PUBLIC, FIELD[failing]: OTHER}
    assert publisher.pending == {}


def test_a_newer_request_replaces_the_pending_one():
    ds = registered()
    publisher = KeyPublisher(ds, "node-a")
    publisher.request(V4, OTHER)
    publisher.request(V4, PUBLIC)
    run(publisher.publish_pending())
    assert stored(ds, NODE_KEY)["status"]["wireguardPublicKey"] == PUBLIC


def test_invalid_keys_are_rejected_before_any_write():
    with pytest.raises(ValueError, match="base64"):
        normalise_public_key("not a key!")
    with pytest.raises(ValueError, match="32 bytes"):
        normalise_public_key("AAAA")


def test_only_the_public_key_is_logged(caplog):
    ds = registered()
    with caplog.at_level(logging.DEBUG):
        run(KeyPublisher(ds, "node-a").publish(V4, PUBLIC))
    text = caplog.text
    assert PUBLIC in text
    assert PRIVATE.to_base64() not in text
    assert PRIVATE.to_hex() not in text
