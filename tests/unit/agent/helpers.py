"""Builders for the agent's unit tests: Calico resources as stored in etcd, a fake-kernel backend,
and the small asyncio drivers the `Agent` tests share.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from meshcrypt.adapters.backend import Backend
from meshcrypt.datastore import layout
from meshcrypt.fakes import FakeKernel
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.ports import KeyValue

T = TypeVar("T")

API = "projectcalico.org/v3"


def new_key() -> Key:
    return PrivateKey.generate().public_key()


def fake_backend(kernel: FakeKernel) -> Backend:
    return Backend(
        name="fake",
        link_kind="wireguard",
        netlink=kernel.netlink_factory(),
        wireguard=kernel.wireguard_factory(),
    )


def dump(doc: object) -> bytes:
    return json.dumps(doc).encode()


def resource(kind: str, name: str, spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec, **extra}


def node_doc(
    name: str,
    ipv4: str | None = None,
    *,
    key: Key | str | None = None,
    tunnel: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"bgp": {"ipv4Address": ipv4}} if ipv4 else {}
    if tunnel:
        spec["wireguard"] = {"interfaceIPv4Address": tunnel}
    status = {"wireguardPublicKey": key if isinstance(key, str) else key.to_base64()} if key else {}
    return resource("Node", name, spec, status=status)


def pool_doc(name: str, cidr: str, block_size: int = 26) -> dict[str, Any]:
    return resource("IPPool", name, {"cidr": cidr, "blockSize": block_size})


def block_doc(cidr: str, node: str | None) -> dict[str, Any]:
    size = ipaddress.ip_network(cidr).num_addresses
    return {
        "cidr": cidr,
        "affinity": f"host:{node}" if node else None,
        "strictAffinity": False,
        "allocations": [None] * size,
        "unallocated": list(range(size)),
        "attributes": [],
        "deleted": False,
    }


def wep_doc(namespace: str, name: str, node: str, *ips: str) -> dict[str, Any]:
    doc = resource("WorkloadEndpoint", name, {"node": node, "ipNetworks": list(ips)})
    doc["metadata"]["namespace"] = namespace
    return doc


def felix_doc(name: str, **spec: object) -> dict[str, Any]:
    return resource("FelixConfiguration", name, dict(spec))


def block_key(cidr: str) -> str:
    return layout.ipam_block_key(ipaddress.ip_network(cidr))


def kv(key: str, value: object, revision: int) -> KeyValue:
    """A datastore entry; `value` is a JSON document, or raw bytes/str stored as given."""
    if isinstance(value, str):
        raw = value.encode()
    elif isinstance(value, bytes):
        raw = value
    else:
        raw = dump(value)
    return KeyValue(key, raw, revision, revision)


def run(main: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    """Run one async test body under a timeout on a fresh event loop."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


async def eventually(
    what: str, check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0
) -> None:
    """Poll `check` (a plain or async predicate) until it holds; AssertionError naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)
