"""A cluster of N remote nodes in etcd, generated from a seed, and single changes to it.

Remote node i (`bench-00001` …) has a `Node` with a BGP address in 172.16.0.0/12 and a WireGuard
public key, and one /26 IPAM block with `affinity: host:<node>` (and its affinity key), the i+1-th
/26 of the pool 10.64.0.0/10 — the first /26 is left free for the agent's own claim. Values have the
shape Calico writes. `Change`s rotate among the three things a delta can touch: a node's key, its
endpoint (BGP address) and its block (moved to a fresh /26 in one transaction).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.baselines import Peers
from meshcrypt.datastore import ipam, layout
from meshcrypt.model.keys import Key
from tests.integration.cluster import resource
from tests.integration.etcd import EtcdServer

POOL = ipaddress.IPv4Network("10.64.0.0/10")
BLOCK_PREFIX = 26
ADDRESSES = ipaddress.IPv4Network("172.16.0.0/12")
MOVED_ADDRESSES = ipaddress.IPv4Address("172.24.0.1")  # endpoint changes take addresses from here
MOVED_BLOCKS = ipaddress.IPv4Address("10.96.0.0")  # block changes take /26s from here
TXN_OPS = 128  # etcd's default --max-txn-ops

Op = tuple[str, str | bytes | None]  # (key, value); None deletes


def _block_ops(cidr: str, node: str) -> list[Op]:
    net = ipaddress.ip_network(cidr)
    return [
        (layout.ipam_block_key(net), ipam._new_block(net, node)),  # what a claim writes
        (
            layout.block_affinity_key(node, net),
            json.dumps({"state": "confirmed", "deleted": False}),
        ),
    ]


def txn(etcd: EtcdServer, ops: Iterable[Op]) -> None:
    """Write `ops` in one etcd transaction (one revision, one watch response)."""

    def b64(text: str | bytes) -> str:
        return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()

    success: list[dict[str, Any]] = [
        {"requestPut": {"key": b64(k), "value": b64(v)}}
        if v is not None
        else {"requestDeleteRange": {"key": b64(k)}}
        for k, v in ops
    ]
    reply = etcd._call("kv/txn", {"success": success})
    if not reply.get("succeeded", True):
        raise RuntimeError(f"etcd transaction failed: {reply}")


@dataclass
class Change:
    """One delta: what to write, and what the device and table 1 must show afterwards."""

    kind: str  # "key" | "endpoint" | "block"
    node: int
    ops: list[Op]
    key: Key  # the node's key afterwards
    old_key: Key | None = None  # key change: the key that must be gone
    endpoint: str = ""  # the node's endpoint address afterwards
    cidr: str = ""  # the node's block afterwards
    old_cidr: str | None = None  # block change: the block that must be gone


@dataclass
class World:
    n: int
    seed: int = 7
    names: list[str] = field(init=False)
    keys: list[Key] = field(init=False)
    addresses: list[str] = field(init=False)
    blocks: list[str] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        first = ADDRESSES.network_address + 1
        self.names = [f"bench-{i + 1:05d}" for i in range(self.n)]
        self.keys = [Key(rng.randbytes(32)) for _ in range(self.n)]
        self.addresses = [str(first + i) for i in range(self.n)]
        size = 1 << (32 - BLOCK_PREFIX)
        self.blocks = [
            f"{POOL.network_address + size * (i + 1)}/{BLOCK_PREFIX}" for i in range(self.n)
        ]
        self._rng = rng
        self._moves = 0

    def peers(self) -> Peers:
        """The configuration every variant must program: one peer and one route per node."""
        return Peers(list(self.keys), list(self.addresses), list(self.blocks))

    def _node_doc(self, i: int) -> str:
        return resource(
            "Node",
            self.names[i],
            {"bgp": {"ipv4Address": f"{self.addresses[i]}/{ADDRESSES.prefixlen}"}},
            status={"wireguardPublicKey": self.keys[i].to_base64()},
        )

    def ops(self) -> Iterator[Op]:
        """Every key of the cluster: the pool, then each node's Node, block and affinity."""
        pool = {"cidr": str(POOL), "blockSize": BLOCK_PREFIX}
        yield layout.ip_pool_key("default-ipv4"), resource("IPPool", "default-ipv4", pool)
        for i in range(self.n):
            yield layout.node_key(self.names[i]), self._node_doc(i)
            yield from _block_ops(self.blocks[i], self.names[i])

    def load(self, etcd: EtcdServer) -> None:
        batch: list[Op] = []
        for op in self.ops():
            batch.append(op)
            if len(batch) == TXN_OPS:
                txn(etcd, batch)
                batch = []
        if batch:
            txn(etcd, batch)

    def change(self, number: int) -> Change:
        """The `number`-th change (0-based): key, endpoint, block, key, … of a seeded random node.

        The world is updated to the state after the change."""
        kind = ("key", "endpoint", "block")[number % 3]
        i = self._rng.randrange(self.n)
        name = self.names[i]
        old_key, old_cidr = self.keys[i], self.blocks[i]
        ops: list[Op] = []
        if kind == "key":
            self.keys[i] = Key(self._rng.randbytes(32))
        elif kind == "endpoint":
            self.addresses[i] = str(MOVED_ADDRESSES + self._moves)
            self._moves += 1
        else:
            size = 1 << (32 - BLOCK_PREFIX)
            self.blocks[i] = f"{MOVED_BLOCKS + size * self._moves}/{BLOCK_PREFIX}"
            self._moves += 1
            old = ipaddress.ip_network(old_cidr)
            ops += [
                (layout.ipam_block_key(old), None),
                (layout.block_affinity_key(name, old), None),
            ]
            ops += _block_ops(self.blocks[i], name)
        if kind != "block":
            ops.append((layout.node_key(name), self._node_doc(i)))
        return Change(
            kind=kind,
            node=i,
            ops=ops,
            key=self.keys[i],
            old_key=old_key if kind == "key" else None,
            endpoint=self.addresses[i],
            cidr=self.blocks[i],
            old_cidr=old_cidr if kind == "block" else None,
        )
