"""Block claims at scale: what `claim_block` reads, and finding a free block among many taken ones."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcrypt.datastore import ipam, layout
from meshcrypt.fakes.datastore import DatastoreOp, FakeDatastore
from meshcrypt.model.net import CIDR, IPFamily
from meshcrypt.ports import KeyValue

from .helpers import block_doc, pool, run, stored

V4, V6 = IPFamily.V4, IPFamily.V6
net = ipaddress.ip_network


class RecordingDatastore(FakeDatastore):
    """Records the prefix of every listing."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: list[str] = []

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        self.listed.append(prefix)
        return await super().list_prefix(prefix)


def subnets(cidr: str, block_size: int) -> Iterator[CIDR]:
    network: CIDR = net(cidr)
    yield from network.subnets(new_prefix=block_size)


def take_lowest(ds: FakeDatastore, cidr: str, count: int, block_size: int = 26) -> list[CIDR]:
    """Blocks of other nodes on the lowest `count` blocks of `cidr` (Calico claims lowest first)."""
    taken = []
    for i, block in enumerate(subnets(cidr, block_size)):
        if i == count:
            break
        ds.server_put(layout.ipam_block_key(block), ipam._new_block(block, f"other-{i}"))
        taken.append(block)
    return taken


def test_a_node_with_a_block_reads_only_its_affinities_and_that_block() -> None:
    ds = RecordingDatastore()
    take_lowest(ds, "10.64.0.0/16", 500)
    pools = [pool("10.64.0.0/16")]
    first = run(ipam.claim_block(ds, "me", V4, pools))
    assert first == net("10.64.125.0/26")
    ds.listed.clear()
    gets = ds.calls[DatastoreOp.GET]

    assert run(ipam.claim_block(ds, "me", V4, pools)) == first

    assert ds.listed == [layout.block_affinities_prefix("me", V4)]
    assert ds.calls[DatastoreOp.GET] - gets == 1


def test_a_stale_affinity_of_a_block_now_owned_by_another_node_is_passed_over() -> None:
    ds = RecordingDatastore()
    pools = [pool("10.64.0.0/16")]
    taken = take_lowest(ds, "10.64.0.0/16", 3)
    # An affinity of ours left on a block another node owns now.
    ds.server_put(layout.block_affinity_key("me", taken[1]), b'{"state":"confirmed"}')

    claimed = run(ipam.claim_block(ds, "me", V4, pools))

    assert claimed == net("10.64.0.192/26")
    assert layout.ipam_blocks_prefix(V4) in ds.listed  # had to claim: every block listed
    assert block_doc(ds, taken[1])["affinity"] == "host:other-1"


def test_a_block_whose_value_escapes_the_node_name_is_still_found() -> None:
    ds = FakeDatastore()
    cidr = net("10.64.3.0/26")
    escaped = ipam._new_block(cidr, "me").replace(b"host:me", b"host:\\u006de")
    ds.server_put(layout.ipam_block_key(cidr), escaped)

    assert run(ipam.claim_block(ds, "me", V4, [pool("10.64.0.0/16")])) == cidr
    assert stored(ds, layout.block_affinity_key("me", cidr))["state"] == "confirmed"


@pytest.mark.parametrize(
    ("family", "cidr", "block_size"),
    [(V4, "10.64.0.0/10", 26), (V6, "fd00:64::/96", 122)],
)
def test_claim_among_many_taken_blocks_is_quick(family: IPFamily, cidr: str, block_size: int):
    """A node joining a cluster whose lowest 4,000 blocks are taken: 10 s when every candidate
    was checked against every taken block; a sort and one pass now."""
    ds = FakeDatastore()
    taken = take_lowest(ds, cidr, 4000, block_size)
    pools = [pool(cidr, block_size)]
    start = time.process_time()

    claimed = run(ipam.claim_block(ds, "newnode", family, pools))

    elapsed = time.process_time() - start
    assert claimed == next(
        b for i, b in enumerate(net(cidr).subnets(new_prefix=block_size)) if i == 4000
    )
    assert claimed not in taken
    assert ds.calls[DatastoreOp.TXN] == 1
    assert elapsed < 1.0, f"claiming past 4,000 taken blocks took {elapsed:.2f} s"


def test_claim_with_gaps_bigger_blocks_and_lost_races() -> None:
    ds = FakeDatastore()
    pools = [pool("10.64.0.0/22")]  # 16 blocks
    for block in ("10.64.0.0/26", "10.64.0.128/25", "10.64.1.64/26", "10.64.2.0/23"):
        ds.server_put(layout.ipam_block_key(net(block)), ipam._new_block(net(block), "x"))
    ds.fail_next(DatastoreOp.TXN)  # someone else takes 10.64.0.64/26 first
    ds.fail_next(DatastoreOp.TXN)  # and 10.64.1.0/26

    assert run(ipam.claim_block(ds, "me", V4, pools)) == net("10.64.1.128/26")
    assert ds.calls[DatastoreOp.TXN] == 3


def _reference_free_blocks(pool_cidr: CIDR, block_size: int, occupied: list[CIDR]) -> list[CIDR]:
    """The quadratic definition: every candidate checked against every occupied block."""

    def overlap(a: CIDR, b: CIDR) -> bool:
        return a.version == b.version and (a.subnet_of(b) or b.subnet_of(a))  # type: ignore[arg-type]

    return [
        c
        for c in pool_cidr.subnets(new_prefix=block_size)
        if not any(overlap(c, t) for t in occupied)
    ]


_occupied = st.lists(
    st.builds(
        lambda address, prefixlen: ipaddress.IPv4Network((address, prefixlen), strict=False),
        st.integers(
            int(ipaddress.IPv4Address("10.63.255.0")), int(ipaddress.IPv4Address("10.64.4.255"))
        ),
        st.integers(21, 30),
    ),
    max_size=25,
)


@given(_occupied, st.sampled_from([24, 26, 28]), st.sampled_from(["10.64.0.0/22", "10.64.2.0/23"]))
def test_free_blocks_are_exactly_those_overlapping_nothing(occupied, block_size, pool_cidr) -> None:
    p = pool(pool_cidr, block_size)
    mixed = [*occupied, net("fd00::/122")]  # another family's block never occupies anything here
    assert list(ipam._free_blocks(p, mixed)) == _reference_free_blocks(p.cidr, block_size, mixed)


def test_owning_a_tunnel_address_is_read_through_the_handle() -> None:
    ds = RecordingDatastore()
    take_lowest(ds, "10.64.0.0/16", 200)
    block = run(ipam.claim_block(ds, "me", V4, [pool("10.64.0.0/16")]))
    assert block is not None
    address = run(ipam.allocate_tunnel_address(ds, "me", V4, block))
    ds.listed.clear()

    assert run(ipam.owns_tunnel_address(ds, "me", V4, address))
    assert ds.listed == []  # the handle's block said so: nothing listed
    # Not ours: the full lookup decides, as without the handle.
    assert not run(ipam.owns_tunnel_address(ds, "me", V4, address + 1))
    assert not run(ipam.owns_tunnel_address(ds, "other-3", V4, address))
    assert ds.listed == [layout.ipam_blocks_prefix(V4)] * 2


def test_owning_a_tunnel_address_without_a_usable_handle_looks_at_every_block() -> None:
    ds = FakeDatastore()
    block = run(ipam.claim_block(ds, "me", V4, [pool("10.64.0.0/16")]))
    assert block is not None
    address = run(ipam.allocate_tunnel_address(ds, "me", V4, block))
    handle_key = layout.ipam_handle_key(layout.wireguard_handle_id("me", V4))

    ds.server_put(handle_key, b"{not json")
    assert run(ipam.owns_tunnel_address(ds, "me", V4, address))
    ds.server_put(handle_key, b'{"handleID":"wireguard-tunnel-addr-me","block":{}}')
    assert run(ipam.owns_tunnel_address(ds, "me", V4, address))
    ds.server_delete(handle_key)
    assert run(ipam.owns_tunnel_address(ds, "me", V4, address))
