"""meshcrypt.datastore.ipam on the in-memory etcd: block claims and tunnel addresses."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcrypt.datastore import ipam, layout
from meshcrypt.fakes.datastore import DatastoreOp, FakeDatastore
from meshcrypt.model.errors import DatastoreUnavailable
from meshcrypt.model.net import IPFamily

from .helpers import addresses_of, block_doc, check_block, pool, put_json, run, stored

V4, V6 = IPFamily.V4, IPFamily.V6
net = ipaddress.ip_network
addr = ipaddress.ip_address

FAMILY_CASES = [
    pytest.param(V4, "10.65.0.0/16", 26, ["10.65.0.0/26", "10.65.0.64/26"], id="v4"),
    pytest.param(V6, "fd00:65::/112", 122, ["fd00:65::/122", "fd00:65::40/122"], id="v6"),
]


# ---- claim_block ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "cidr", "size", "expected"), FAMILY_CASES)
def test_claim_creates_block_and_affinity_in_one_transaction(family, cidr, size, expected):
    ds = FakeDatastore()
    claimed = run(ipam.claim_block(ds, "node-a", family, [pool(cidr, size)]))

    assert claimed == net(expected[0])
    assert ds.calls[DatastoreOp.TXN] == 1
    block = block_doc(ds, claimed)
    assert block == {
        "cidr": expected[0],
        "affinity": "host:node-a",
        "strictAffinity": False,
        "allocations": [None] * 64,
        "unallocated": list(range(64)),
        "attributes": [],
        "deleted": False,
        "sequenceNumber": 0,
        "sequenceNumberForAllocation": {},
    }
    affinity = stored(ds, layout.block_affinity_key("node-a", claimed))
    assert affinity == {"state": "confirmed", "deleted": False}
    # The block and the affinity were written by the same transaction (same revision).
    block_kv = run(ds.get(layout.ipam_block_key(claimed)))
    affinity_kv = run(ds.get(layout.block_affinity_key("node-a", claimed)))
    assert block_kv is not None and affinity_kv is not None
    assert block_kv.mod_revision == affinity_kv.mod_revision


@pytest.mark.parametrize(("family", "cidr", "size", "expected"), FAMILY_CASES)
def test_claim_returns_the_existing_block_without_writing(family, cidr, size, expected):
    ds = FakeDatastore()
    pools = [pool(cidr, size)]
    first = run(ipam.claim_block(ds, "node-a", family, pools))
    revision = ds.revision

    again = run(ipam.claim_block(ds, "node-a", family, pools))

    assert again == first
    assert ds.revision == revision


@pytest.mark.parametrize(("family", "cidr", "size", "expected"), FAMILY_CASES)
def test_second_node_gets_the_next_block(family, cidr, size, expected):
    ds = FakeDatastore()
    pools = [pool(cidr, size)]
    a = run(ipam.claim_block(ds, "node-a", family, pools))
    b = run(ipam.claim_block(ds, "node-b", family, pools))
    assert [a, b] == [net(c) for c in expected]


@pytest.mark.parametrize("family", [V4, V6])
def test_ten_concurrent_claimers_get_distinct_blocks(family):
    ds = FakeDatastore()
    pools = [pool("10.65.0.0/16") if family is V4 else pool("fd00:65::/112")]

    async def claim_all():
        return await asyncio.gather(
            *(ipam.claim_block(ds, f"node-{i}", family, pools) for i in range(10))
        )

    claimed = run(claim_all())

    assert None not in claimed
    assert len(set(claimed)) == 10
    # They really raced: every claimer first tried the lowest block, so most lost at least once.
    assert ds.calls[DatastoreOp.TXN] > 10
    blocks, _ = run(ds.list_prefix(layout.ipam_blocks_prefix(family)))
    assert len(blocks) == 10
    for i, cidr in enumerate(claimed):
        assert block_doc(ds, cidr)["affinity"] == f"host:node-{i}"
        assert layout.block_affinity_key(f"node-{i}", cidr) in ds.snapshot()
    # Lowest first: together they took exactly the ten lowest blocks.
    first = pools[0].cidr.subnets(new_prefix=pools[0].block_size)
    assert set(claimed) == {next(first) for _ in range(10)}


def test_claim_skips_existing_and_overlapping_blocks():
    ds = FakeDatastore()
    put_json(ds, layout.ipam_block_key(net("10.65.0.0/26")), {"cidr": "10.65.0.0/26"})
    # A bigger block of another pool configuration covers the next two /26s.
    put_json(ds, layout.ipam_block_key(net("10.65.0.128/25")), {"cidr": "10.65.0.128/25"})
    # An unreadable block still occupies its range.
    ds.server_put(layout.ipam_block_key(net("10.65.0.64/26")), b"{not json")

    claimed = run(ipam.claim_block(ds, "node-a", V4, [pool("10.65.0.0/16")]))

    assert claimed == net("10.65.1.0/26")


def test_claim_ignores_disabled_pools_and_other_families():
    ds = FakeDatastore()
    pools = [
        pool("10.1.0.0/16", name="off", disabled=True),
        pool("fd00::/112", name="v6"),
        pool("10.2.0.0/16", name="on"),
    ]
    assert run(ipam.claim_block(ds, "node-a", V4, pools)) == net("10.2.0.0/26")
    assert run(ipam.claim_block(ds, "node-z", V4, pools[:2])) is None


def test_claim_takes_pools_lowest_address_first():
    ds = FakeDatastore()
    pools = [pool("10.9.0.0/24", name="high"), pool("10.1.0.0/24", name="low")]
    assert run(ipam.claim_block(ds, "node-a", V4, pools)) == net("10.1.0.0/26")


def test_claim_returns_none_when_every_pool_is_full():
    ds = FakeDatastore()
    pools = [pool("10.65.0.0/25")]  # two /26 blocks
    assert run(ipam.claim_block(ds, "a", V4, pools)) == net("10.65.0.0/26")
    assert run(ipam.claim_block(ds, "b", V4, pools)) == net("10.65.0.64/26")
    assert run(ipam.claim_block(ds, "c", V4, pools)) is None


def test_lost_race_moves_on_to_the_next_block():
    ds = FakeDatastore()
    ds.fail_next(DatastoreOp.TXN)  # someone else wins the first block meanwhile

    claimed = run(ipam.claim_block(ds, "node-a", V4, [pool("10.65.0.0/16")]))

    assert claimed == net("10.65.0.64/26")
    assert ds.calls[DatastoreOp.TXN] == 2


def test_block_in_a_disabled_pool_is_replaced_by_a_new_claim():
    ds = FakeDatastore()
    old = run(ipam.claim_block(ds, "node-a", V4, [pool("10.1.0.0/16", name="old")]))
    pools = [pool("10.1.0.0/16", name="old", disabled=True), pool("10.2.0.0/16", name="new")]

    new = run(ipam.claim_block(ds, "node-a", V4, pools))

    assert old is not None
    assert (old, new) == (net("10.1.0.0/26"), net("10.2.0.0/26"))
    assert block_doc(ds, old)["affinity"] == "host:node-a"  # kept: it may hold workloads


def test_block_found_by_affinity_field_gets_its_missing_affinity_key():
    ds = FakeDatastore()
    cidr = net("10.65.0.192/26")
    doc = json.loads(ipam._new_block(cidr, "node-a"))
    put_json(ds, layout.ipam_block_key(cidr), doc)

    assert run(ipam.claim_block(ds, "node-a", V4, [pool("10.65.0.0/16")])) == cidr
    assert stored(ds, layout.block_affinity_key("node-a", cidr))["state"] == "confirmed"


def test_half_done_claim_with_only_an_affinity_is_completed():
    ds = FakeDatastore()
    cidr = net("10.65.3.0/26")
    put_json(ds, layout.block_affinity_key("node-a", cidr), {"state": "pending", "deleted": False})

    assert run(ipam.claim_block(ds, "node-a", V4, [pool("10.65.0.0/16")])) == cidr
    assert block_doc(ds, cidr)["affinity"] == "host:node-a"
    assert stored(ds, layout.block_affinity_key("node-a", cidr))["state"] == "confirmed"


def test_claim_propagates_datastore_errors():
    ds = FakeDatastore()
    ds.go_down()
    with pytest.raises(DatastoreUnavailable):
        run(ipam.claim_block(ds, "node-a", V4, [pool("10.65.0.0/16")]))


# ---- allocate_tunnel_address ---------------------------------------------------------------------


def _claimed(ds, node="node-a", family=V4):
    cidr = "10.65.0.0/16" if family is V4 else "fd00:65::/112"
    block = run(ipam.claim_block(ds, node, family, [pool(cidr)]))
    assert block is not None
    return block


@pytest.mark.parametrize(
    ("family", "handle", "attr_type"),
    [
        (V4, "wireguard-tunnel-addr-node-a", "wireguardTunnelAddress"),
        (V6, "wireguard-v6-tunnel-addr-node-a", "wireguardV6TunnelAddress"),
    ],
)
def test_allocate_takes_the_first_address_with_calicos_handle_and_attributes(
    family, handle, attr_type
):
    ds = FakeDatastore()
    block = _claimed(ds, family=family)

    address = run(ipam.allocate_tunnel_address(ds, "node-a", family, block))

    assert address == block.network_address  # Calico reserves nothing on Linux
    doc = block_doc(ds, block)
    check_block(doc)
    assert doc["allocations"][0] == 0
    assert doc["unallocated"] == list(range(1, 64))
    assert doc["attributes"] == [
        {"handle_id": handle, "secondary": {"node": "node-a", "type": attr_type}}
    ]
    assert stored(ds, layout.ipam_handle_key(handle)) == {
        "handleID": handle,
        "block": {str(block): 1},
        "deleted": False,
    }


def test_allocate_is_idempotent():
    ds = FakeDatastore()
    block = _claimed(ds)
    first = run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))
    revision = ds.revision

    again = run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))

    assert again == first
    assert ds.revision == revision


def test_concurrent_allocations_for_one_node_agree():
    ds = FakeDatastore()
    block = _claimed(ds)

    async def both():
        return await asyncio.gather(
            *(ipam.allocate_tunnel_address(ds, "node-a", V4, block) for _ in range(5))
        )

    results = run(both())

    assert len(set(results)) == 1
    doc = block_doc(ds, block)
    check_block(doc)
    assert addresses_of(doc, "wireguard-tunnel-addr-node-a") == [str(results[0])]


def test_allocate_skips_addresses_held_by_others_and_keeps_their_fields():
    ds = FakeDatastore()
    block = _claimed(ds)
    key = layout.ipam_block_key(block)
    doc = block_doc(ds, block)
    # A workload (Calico CNI) holds the first two addresses; there are fields we do not know.
    doc["attributes"] = [{"handle_id": "k8s-pod-1", "secondary": {"pod": "p"}, "alternate": {}}]
    doc["allocations"][0] = doc["allocations"][1] = 0
    doc["unallocated"] = list(range(2, 64))
    doc["sequenceNumberForAllocation"] = {"0": 0, "1": 0}
    doc["futureField"] = {"x": 1}
    put_json(ds, key, doc)

    address = run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))

    assert address == addr("10.65.0.2")
    after = block_doc(ds, block)
    check_block(after)
    assert after["futureField"] == {"x": 1}
    assert after["attributes"][0] == doc["attributes"][0]
    assert after["allocations"][:3] == [0, 0, 1]


def test_allocate_retries_after_a_write_conflict():
    ds = FakeDatastore()
    block = _claimed(ds)
    ds.fail_next(DatastoreOp.TXN)

    address = run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))

    assert address == block.network_address
    assert ds.calls[DatastoreOp.TXN] == 3  # claim, conflict, success
    check_block(block_doc(ds, block))


class CalicoCniInterloper:
    """Wraps the store: just before our first block write lands, "Calico CNI" allocates the
    block's first free address to a pod (a concurrent writer of the same block)."""

    def __init__(self, inner: FakeDatastore, block_key: str) -> None:
        self.inner = inner
        self.block_key = block_key
        self.done = False

    async def get(self, key):
        return await self.inner.get(key)

    async def list_prefix(self, prefix):
        return await self.inner.list_prefix(prefix)

    def watch_prefix(self, prefix, start_revision):
        return self.inner.watch_prefix(prefix, start_revision)

    async def txn(self, expect, puts, deletes=()):
        if not self.done and self.block_key in puts:
            self.done = True
            doc = json.loads(self.inner.snapshot()[self.block_key])
            ordinal = doc["unallocated"].pop(0)
            doc["attributes"].append({"handle_id": "k8s-pod", "secondary": {"pod": "p"}})
            doc["allocations"][ordinal] = len(doc["attributes"]) - 1
            doc["sequenceNumberForAllocation"][str(ordinal)] = 0
            put_json(self.inner, self.block_key, doc)
        return await self.inner.txn(expect, puts, deletes)

    async def close(self):
        await self.inner.close()


def test_allocate_never_overwrites_a_concurrent_writer_of_the_block():
    inner = FakeDatastore()
    block = _claimed(inner)
    ds = CalicoCniInterloper(inner, layout.ipam_block_key(block))

    address = run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))

    doc = block_doc(inner, block)
    check_block(doc)
    assert addresses_of(doc, "k8s-pod") == ["10.65.0.0"]
    assert addresses_of(doc, "wireguard-tunnel-addr-node-a") == [str(address)]
    assert address == addr("10.65.0.1")


def test_allocate_reuses_the_head_of_unallocated_like_calico():
    ds = FakeDatastore()
    block = _claimed(ds)
    key = layout.ipam_block_key(block)
    doc = block_doc(ds, block)
    doc["unallocated"] = [17, *[o for o in range(64) if o != 17]]
    put_json(ds, key, doc)

    assert run(ipam.allocate_tunnel_address(ds, "node-a", V4, block)) == addr("10.65.0.17")


def test_allocate_in_a_full_block_fails_clearly():
    ds = FakeDatastore()
    block = _claimed(ds)
    doc = block_doc(ds, block)
    doc["attributes"] = [{"handle_id": "k8s", "secondary": {}}]
    doc["allocations"] = [0] * 64
    doc["unallocated"] = []
    doc["sequenceNumberForAllocation"] = {str(o): 0 for o in range(64)}
    put_json(ds, layout.ipam_block_key(block), doc)

    with pytest.raises(ipam.IPAMError, match="no free address"):
        run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))
    assert layout.ipam_handle_key("wireguard-tunnel-addr-node-a") not in ds.snapshot()


def test_allocate_refuses_a_missing_or_foreign_block():
    ds = FakeDatastore()
    with pytest.raises(ipam.IPAMError, match="does not exist"):
        run(ipam.allocate_tunnel_address(ds, "node-a", V4, net("10.65.0.0/26")))
    block = _claimed(ds, node="node-b")
    with pytest.raises(ipam.IPAMError, match="not affine"):
        run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))


def test_allocate_rejects_unusable_block_data_naming_the_key():
    ds = FakeDatastore()
    block = _claimed(ds)
    doc = block_doc(ds, block)
    doc["allocations"] = [None] * 3
    put_json(ds, layout.ipam_block_key(block), doc)
    with pytest.raises(ipam.IPAMError, match=layout.ipam_block_key(block)):
        run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))


def test_allocate_in_a_new_block_releases_the_old_address_atomically():
    ds = FakeDatastore()
    old = run(ipam.claim_block(ds, "node-a", V4, [pool("10.1.0.0/16", name="old")]))
    assert old is not None
    run(ipam.allocate_tunnel_address(ds, "node-a", V4, old))
    new = run(ipam.claim_block(ds, "node-a", V4, [pool("10.2.0.0/16", name="new")]))
    assert new is not None
    before = ds.revision

    address = run(ipam.allocate_tunnel_address(ds, "node-a", V4, new))

    assert address == addr("10.2.0.0")
    assert ds.revision == before + 1  # one transaction
    assert addresses_of(block_doc(ds, old), "wireguard-tunnel-addr-node-a") == []
    check_block(block_doc(ds, old))
    handle = stored(ds, layout.ipam_handle_key("wireguard-tunnel-addr-node-a"))
    assert handle["block"] == {"10.2.0.0/26": 1}


# ---- release_tunnel_address ----------------------------------------------------------------------


def test_release_frees_the_address_and_deletes_the_handle():
    ds = FakeDatastore()
    block = _claimed(ds)
    run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))

    released = run(ipam.release_tunnel_address(ds, "node-a", V4))

    assert released == [block.network_address]
    doc = block_doc(ds, block)
    check_block(doc)
    assert doc["attributes"] == []
    assert doc["allocations"] == [None] * 64
    assert doc["unallocated"][-1] == 0  # appended, as libcalico-go does
    assert layout.ipam_handle_key("wireguard-tunnel-addr-node-a") not in ds.snapshot()


def test_release_is_idempotent_and_family_scoped():
    ds = FakeDatastore()
    v4 = _claimed(ds)
    v6 = _claimed(ds, family=V6)
    run(ipam.allocate_tunnel_address(ds, "node-a", V4, v4))
    run(ipam.allocate_tunnel_address(ds, "node-a", V6, v6))

    assert run(ipam.release_tunnel_address(ds, "node-a", V4)) == [v4.network_address]
    revision = ds.revision
    assert run(ipam.release_tunnel_address(ds, "node-a", V4)) == []
    assert ds.revision == revision
    assert addresses_of(block_doc(ds, v6), "wireguard-v6-tunnel-addr-node-a") == [
        str(v6.network_address)
    ]


def test_release_renumbers_the_remaining_attributes_and_keeps_unknown_fields():
    ds = FakeDatastore()
    block = _claimed(ds)
    run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))
    doc = block_doc(ds, block)
    doc["attributes"].append({"handle_id": "k8s-pod", "secondary": {"pod": "x"}})
    doc["allocations"][5] = 1
    doc["unallocated"].remove(5)
    doc["sequenceNumberForAllocation"]["5"] = 7
    doc["futureField"] = [1, 2]
    put_json(ds, layout.ipam_block_key(block), doc)

    run(ipam.release_tunnel_address(ds, "node-a", V4))

    after = block_doc(ds, block)
    check_block(after)
    assert after["attributes"] == [{"handle_id": "k8s-pod", "secondary": {"pod": "x"}}]
    assert after["allocations"][5] == 0
    assert after["futureField"] == [1, 2]
    assert after["sequenceNumberForAllocation"] == {"5": 7}


def test_release_with_a_vanished_block_still_deletes_the_handle():
    ds = FakeDatastore()
    block = _claimed(ds)
    run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))
    ds.server_delete(layout.ipam_block_key(block))

    assert run(ipam.release_tunnel_address(ds, "node-a", V4)) == []
    assert layout.ipam_handle_key("wireguard-tunnel-addr-node-a") not in ds.snapshot()


def test_release_retries_after_a_conflict():
    ds = FakeDatastore()
    block = _claimed(ds)
    run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))
    ds.fail_next(DatastoreOp.TXN)

    assert run(ipam.release_tunnel_address(ds, "node-a", V4)) == [block.network_address]
    assert layout.ipam_handle_key("wireguard-tunnel-addr-node-a") not in ds.snapshot()


# ---- owns_tunnel_address -------------------------------------------------------------------------


def test_owns_tunnel_address_checks_node_and_type():
    ds = FakeDatastore()
    block = _claimed(ds)
    address = run(ipam.allocate_tunnel_address(ds, "node-a", V4, block))

    assert run(ipam.owns_tunnel_address(ds, "node-a", V4, address))
    assert not run(ipam.owns_tunnel_address(ds, "node-b", V4, address))
    assert not run(ipam.owns_tunnel_address(ds, "node-a", V4, address + 1))  # unallocated
    assert not run(ipam.owns_tunnel_address(ds, "node-a", V4, addr("10.99.0.1")))  # no block
    doc = block_doc(ds, block)
    doc["attributes"][0]["secondary"]["type"] = "ipipTunnelAddress"
    put_json(ds, layout.ipam_block_key(block), doc)
    assert not run(ipam.owns_tunnel_address(ds, "node-a", V4, address))


# ---- property: any interleaving keeps the blocks consistent --------------------------------------


@given(
    st.lists(
        st.tuples(st.sampled_from(["allocate", "release"]), st.integers(0, 3)),
        min_size=1,
        max_size=12,
    )
)
def test_any_sequence_of_concurrent_operations_keeps_blocks_consistent(ops):
    ds = FakeDatastore()
    pools = [pool("10.65.0.0/24")]
    nodes = [f"n{i}" for i in range(4)]

    async def scenario():
        blocks = await asyncio.gather(*(ipam.claim_block(ds, n, V4, pools) for n in nodes))
        await asyncio.gather(
            *(
                ipam.allocate_tunnel_address(ds, nodes[i], V4, blocks[i])
                if op == "allocate"
                else ipam.release_tunnel_address(ds, nodes[i], V4)
                for op, i in ops
            )
        )
        return blocks

    blocks = run(scenario())
    assert len(set(blocks)) == 4
    for i, block in enumerate(blocks):
        doc = block_doc(ds, block)
        check_block(doc)
        handle_id = f"wireguard-tunnel-addr-{nodes[i]}"
        held = addresses_of(doc, handle_id)
        assert len(held) <= 1
        handle_key = layout.ipam_handle_key(handle_id)
        if held:
            assert stored(ds, handle_key)["block"] == {str(block): 1}
        else:
            assert handle_key not in ds.snapshot() or stored(ds, handle_key)["block"] == {}
