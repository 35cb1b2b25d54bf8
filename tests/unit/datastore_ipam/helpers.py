"""Shared builders and invariant checks for the IPAM and registration tests."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from meshcrypt.datastore import layout
from meshcrypt.fakes.datastore import FakeDatastore
from meshcrypt.model.net import CIDR
from meshcrypt.model.resources import IPPoolResource

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def pool(
    cidr: str,
    block_size: int | None = None,
    *,
    name: str = "p",
    disabled: bool = False,
    uses: tuple[str, ...] = ("Workload", "Tunnel"),
) -> IPPoolResource:
    net = ipaddress.ip_network(cidr)
    size = block_size if block_size is not None else (26 if net.version == 4 else 122)
    return IPPoolResource(
        name=name, cidr=net, block_size=size, disabled=disabled, allowed_uses=uses
    )


def stored(ds: FakeDatastore, key: str) -> Any:
    """The decoded JSON at `key` (KeyError when absent)."""
    return json.loads(ds.snapshot()[key])


def block_doc(ds: FakeDatastore, cidr: str | CIDR) -> Any:
    return stored(ds, layout.ipam_block_key(ipaddress.ip_network(cidr)))


def check_block(doc: Any) -> None:
    """libcalico-go's block invariants: `allocations` and `unallocated` partition the ordinals,
    every allocation points at an attribute, every attribute is used, sequence numbers exist
    exactly for the allocated ordinals."""
    size = ipaddress.ip_network(doc["cidr"]).num_addresses
    allocations, unallocated, attributes = doc["allocations"], doc["unallocated"], doc["attributes"]
    assert len(allocations) == size
    used = {o for o, a in enumerate(allocations) if a is not None}
    assert len(unallocated) == len(set(unallocated)), "duplicate free ordinals"
    assert used.isdisjoint(unallocated)
    assert used | set(unallocated) == set(range(size))
    assert all(0 <= allocations[o] < len(attributes) for o in used)
    assert {allocations[o] for o in used} == set(range(len(attributes))), "unused attribute"
    assert set(doc["sequenceNumberForAllocation"]) == {str(o) for o in used}


def addresses_of(doc: Any, handle: str) -> list[str]:
    """The addresses of `handle` in a block document."""
    net = ipaddress.ip_network(doc["cidr"])
    indexes = {i for i, a in enumerate(doc["attributes"]) if a["handle_id"] == handle}
    return [str(net.network_address + o) for o, a in enumerate(doc["allocations"]) if a in indexes]


def put_json(ds: FakeDatastore, key: str, doc: Any) -> None:
    ds.server_put(key, json.dumps(doc).encode())
