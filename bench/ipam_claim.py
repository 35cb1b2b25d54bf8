"""A node joining a cluster whose lowest N blocks are taken: how long its block claim takes.

Calico claims blocks lowest address first, so in a grown cluster a new node's first free /26 comes
after every taken one. This times `ipam.claim_block` for such a node against an in-memory etcd
(`FakeDatastore`: no I/O, so the figure is the agent's own CPU, spent on its event loop), beside the
listing of the N blocks alone (`_scan_blocks`, which a claim of a node without a block does first;
`_affine_blocks`, which listed and decoded them, in versions before it).

    .venv/bin/python -m bench ipam_claim [--sizes 500,1000,2000,4000]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import time
from collections.abc import Sequence

from meshcrypt.datastore import ipam, layout
from meshcrypt.fakes.datastore import FakeDatastore
from meshcrypt.model.net import IPFamily
from meshcrypt.model.resources import IPPoolResource

CIDR = ipaddress.IPv4Network("10.64.0.0/10")
POOL = IPPoolResource("default-ipv4", CIDR, 26)


def _taken(n: int) -> FakeDatastore:
    ds = FakeDatastore()
    for i, block in enumerate(CIDR.subnets(new_prefix=POOL.block_size)):
        if i == n:
            break
        ds.server_put(layout.ipam_block_key(block), ipam._new_block(block, f"node-{i}"))
    return ds


async def _measure(n: int) -> tuple[float, float]:
    ds = _taken(n)
    scan = getattr(ipam, "_scan_blocks", None) or getattr(ipam, "_affine_blocks")  # noqa: B009
    start = time.perf_counter()
    await scan(ds, "joining", IPFamily.V4)
    listed = time.perf_counter() - start
    start = time.perf_counter()
    claimed = await ipam.claim_block(ds, "joining", IPFamily.V4, [POOL])
    assert claimed is not None and claimed.network_address == CIDR.network_address + 64 * n
    return listed, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench ipam_claim", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--sizes", type=lambda t: [int(x) for x in t.split(",")], default=[500, 1000, 2000, 4000]
    )
    args = parser.parse_args(argv)
    print("blocks taken   list them (scan)   claim_block (first free after them)")
    for n in args.sizes:
        listed, claim = asyncio.run(_measure(n))
        print(f"{n:12,}   {listed * 1000:13.0f} ms   {claim * 1000:12.0f} ms")
    return 0
