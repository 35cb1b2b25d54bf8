"""Calico-compatible IPAM: claim an affine block, allocate and release the WireGuard tunnel address.

Everything here is a read-modify-write over `ports.Datastore` that ends in ONE etcd transaction
whose compares cover every key the decision was based on, so concurrent agents (and Calico's own
IPAM) can never both win:

- `claim_block` creates the block and the node's affinity together, each "must not exist". Two
  agents that pick the same free block race on that transaction; the loser moves on to the next
  block. Candidates are tried lowest address first, so the outcome is deterministic.
- `allocate_tunnel_address` (and its generic form `allocate_address`, one handle's address, which
  the lab uses for its pods as Calico's CNI plugin would) takes the first ordinal of the block's
  `unallocated` list (as libcalico-go's `autoAssign` does) and writes block and handle in one
  transaction; a conflict re-reads and retries.
- `release_tunnel_address` frees every address of the handle and deletes the handle, in one
  transaction.

Value shapes (libcalico-go `model.AllocationBlock`, `BlockAffinity`, `IPAMHandle`)::

    block    {"cidr", "affinity": "host:<node>", "strictAffinity": false,
              "allocations": [null | <attribute index>, ...one per address],
              "unallocated": [<ordinal>, ...], "attributes": [{"handle_id", "secondary": {...}}],
              "deleted": false, "sequenceNumber": 0, "sequenceNumberForAllocation": {"<ord>": n}}
    affinity {"state": "confirmed", "deleted": false}
    handle   {"handleID", "block": {"<cidr>": <count>}, "deleted": false}

Fields meshcrypt does not know are kept on every rewrite.

No address is reserved: like Calico (Linux), the block's first address (the "network address" of
a /26) is a valid tunnel address — blocks are not link subnets, and Calico's own tunnel addresses
are usually that first address. `sequenceNumber` is bumped on every block write meshcrypt makes
and recorded per allocation, so a release based on stale data can be detected as in Calico.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from ipaddress import IPv4Network, IPv6Network

from meshcrypt.datastore import codecs, layout
from meshcrypt.model.errors import RetryableError
from meshcrypt.model.net import CIDR, IPAddress, IPFamily
from meshcrypt.model.resources import IPAMBlockResource, IPPoolResource
from meshcrypt.ports import Datastore, KeyValue

log = logging.getLogger(__name__)

#: Calico's allocation attribute `type` of a node's WireGuard tunnel address.
TUNNEL_ATTRIBUTE_TYPE = {
    IPFamily.V4: "wireguardTunnelAddress",
    IPFamily.V6: "wireguardV6TunnelAddress",
}

#: The pool use a tunnel address needs (`IPPool.spec.allowedUses`).
TUNNEL_USE = "Tunnel"

#: Compare-and-swap attempts before giving up (libcalico-go's `datastoreRetries`).
MAX_ATTEMPTS = 100

_AFFINITY_VALUE = {"state": "confirmed", "deleted": False}


class IPAMError(RetryableError):
    """An IPAM operation could not complete: a full or vanished block, unusable stored data, or
    more write conflicts than `MAX_ATTEMPTS`. The message names the key or block."""


# ---- pools ---------------------------------------------------------------------------------------


def usable_pools(
    pools: Iterable[IPPoolResource], family: IPFamily, use: str | None = None
) -> list[IPPoolResource]:
    """Enabled pools of `family` (allowing `use`, when given), lowest address first.

    Pool `nodeSelector`s are not evaluated: every pool is taken to select every node.
    """
    found = [
        p
        for p in pools
        if IPFamily.of(p.cidr) is family
        and not p.disabled
        and (use is None or use in p.allowed_uses)
    ]
    return sorted(found, key=lambda p: (p.cidr.network_address, p.cidr.prefixlen))


def _within(inner: CIDR, outer: CIDR) -> bool:
    if isinstance(inner, IPv4Network) and isinstance(outer, IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, IPv6Network) and isinstance(outer, IPv6Network):
        return inner.subnet_of(outer)
    return False


def _in_pools(cidr: CIDR, pools: Sequence[IPPoolResource]) -> bool:
    return any(_within(cidr, p.cidr) for p in pools)


# ---- stored values -------------------------------------------------------------------------------


def _dump(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _new_block(cidr: CIDR, node: str) -> bytes:
    size = cidr.num_addresses
    return _dump(
        {
            "cidr": str(cidr),
            "affinity": f"host:{node}",
            "strictAffinity": False,
            "allocations": [None] * size,
            "unallocated": list(range(size)),
            "attributes": [],
            "deleted": False,
            "sequenceNumber": 0,
            "sequenceNumberForAllocation": {},
        }
    )


class _Block:
    """An IPAM block being edited: its parsed JSON (unknown fields kept) and checked arrays."""

    def __init__(self, kv: KeyValue) -> None:
        try:
            decoded = codecs.decode_ipam_block(kv.key, kv.value)
        except codecs.ResourceError as exc:
            raise IPAMError(str(exc)) from exc
        self.key = kv.key
        self.revision = kv.mod_revision
        self.cidr: CIDR = decoded.cidr
        self.node = decoded.node
        self.deleted = decoded.deleted
        self.doc: dict[str, object] = json.loads(kv.value)
        self.attributes = self._attributes()
        self.allocations = self._allocations()
        self.unallocated = self._unallocated()

    def _bad(self, reason: str) -> IPAMError:
        return IPAMError(f"invalid IPAM block at {self.key}: {reason}")

    def _attributes(self) -> list[dict[str, object]]:
        raw = self.doc.get("attributes") or []
        if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
            raise self._bad("attributes: expected a list of objects")
        return list(raw)

    def _allocations(self) -> list[int | None]:
        raw = self.doc.get("allocations")
        size = self.cidr.num_addresses
        if not isinstance(raw, list) or len(raw) != size:
            raise self._bad(f"allocations: expected a list of {size} entries")
        out: list[int | None] = []
        for item in raw:
            if item is None:
                out.append(None)
            elif isinstance(item, int) and not isinstance(item, bool):
                if not 0 <= item < len(self.attributes):
                    raise self._bad(f"allocations: attribute index {item} out of range")
                out.append(item)
            else:
                raise self._bad(f"allocations: unexpected entry {item!r}")
        return out

    def _unallocated(self) -> list[int]:
        raw = self.doc.get("unallocated") or []
        size = self.cidr.num_addresses
        if not isinstance(raw, list) or not all(
            isinstance(o, int) and not isinstance(o, bool) and 0 <= o < size for o in raw
        ):
            raise self._bad(f"unallocated: expected ordinals below {size}")
        return list(raw)

    # ---- reading ---------------------------------------------------------------------------------

    def address(self, ordinal: int) -> IPAddress:
        return self.cidr.network_address + ordinal

    def ordinal(self, address: IPAddress) -> int | None:
        if address.version != self.cidr.version or address not in self.cidr:
            return None
        return int(address) - int(self.cidr.network_address)

    def attribute_of(self, ordinal: int) -> dict[str, object] | None:
        index = self.allocations[ordinal]
        return None if index is None else self.attributes[index]

    def ordinals_of_handle(self, handle_id: str) -> list[int]:
        indexes = {i for i, a in enumerate(self.attributes) if a.get("handle_id") == handle_id}
        return [o for o, index in enumerate(self.allocations) if index in indexes]

    # ---- editing ---------------------------------------------------------------------------------

    def _sequence(self) -> dict[str, object]:
        seq = self.doc.get("sequenceNumberForAllocation")
        if not isinstance(seq, dict):
            seq = {}
            self.doc["sequenceNumberForAllocation"] = seq
        return seq

    def _bump_sequence(self) -> int:
        current = self.doc.get("sequenceNumber")
        number = current + 1 if isinstance(current, int) and not isinstance(current, bool) else 1
        self.doc["sequenceNumber"] = number
        return number

    def assign_first_free(self, handle_id: str, secondary: dict[str, str]) -> int | None:
        """Allocate the head of `unallocated` to the handle; None when the block is full."""
        # An ordinal listed as free but allocated is a stale entry: `allocations` is the source
        # of truth, so it is dropped and the next one taken.
        while self.unallocated and self.allocations[self.unallocated[0]] is not None:
            self.unallocated.pop(0)
        if not self.unallocated:
            return None
        ordinal = self.unallocated.pop(0)
        attribute: dict[str, object] = {"handle_id": handle_id, "secondary": secondary}
        try:
            index = self.attributes.index(attribute)
        except ValueError:
            index = len(self.attributes)
            self.attributes.append(attribute)
        self.allocations[ordinal] = index
        self._sequence()[str(ordinal)] = self._bump_sequence()
        return ordinal

    def release_handle(self, handle_id: str) -> list[int]:
        """Free every address of the handle, dropping its now unused attributes."""
        ordinals = self.ordinals_of_handle(handle_id)
        dropped = {i for i, a in enumerate(self.attributes) if a.get("handle_id") == handle_id}
        if not ordinals and not dropped:
            return []
        renumber: dict[int, int] = {}
        kept: list[dict[str, object]] = []
        for i, attribute in enumerate(self.attributes):
            if i not in dropped:
                renumber[i] = len(kept)
                kept.append(attribute)
        self.attributes = kept
        self.allocations = [None if a is None else renumber.get(a) for a in self.allocations]
        sequence = self._sequence()
        for ordinal in ordinals:
            self.unallocated.append(ordinal)
            sequence.pop(str(ordinal), None)
        self._bump_sequence()
        return ordinals

    def encode(self) -> bytes:
        self.doc["attributes"] = self.attributes
        self.doc["allocations"] = self.allocations
        self.doc["unallocated"] = self.unallocated
        return _dump(self.doc)


class _Handle:
    """An IPAM handle being edited; `counts` is its `block` map."""

    def __init__(self, handle_id: str, kv: KeyValue | None) -> None:
        self.key = layout.ipam_handle_key(handle_id)
        self.revision = 0 if kv is None else kv.mod_revision
        self.original = None if kv is None else kv.value
        self.counts: dict[CIDR, int] = {}
        if kv is None:
            self.doc: dict[str, object] = {"handleID": handle_id, "block": {}, "deleted": False}
            return
        try:
            decoded = codecs.decode_ipam_handle(kv.key, kv.value)
        except codecs.ResourceError as exc:
            raise IPAMError(str(exc)) from exc
        self.doc = json.loads(kv.value)
        self.counts = dict(decoded.blocks)

    def set_count(self, cidr: CIDR, count: int) -> None:
        if count > 0:
            self.counts[cidr] = count
        else:
            self.counts.pop(cidr, None)

    def encode(self) -> bytes:
        self.doc["block"] = {str(cidr): n for cidr, n in self.counts.items()}
        return _dump(self.doc)


async def _read_handle(datastore: Datastore, handle_id: str) -> _Handle:
    return _Handle(handle_id, await datastore.get(layout.ipam_handle_key(handle_id)))


# ---- block claim ---------------------------------------------------------------------------------


def _cidr_order(cidr: CIDR) -> tuple[int, int]:
    return (int(cidr.network_address), cidr.prefixlen)


async def _affinities(datastore: Datastore, node: str, family: IPFamily) -> dict[CIDR, KeyValue]:
    """The node's block affinity keys of the family, by CIDR."""
    affinities: dict[CIDR, KeyValue] = {}
    listed, _ = await datastore.list_prefix(layout.block_affinities_prefix(node, family))
    for kv in listed:
        parsed = layout.parse_affinity_key(kv.key)
        if parsed is not None:
            affinities[parsed[1]] = kv
    return affinities


def _decode_block(kv: KeyValue) -> IPAMBlockResource | None:
    """The block, or None (logged) when its value is unreadable: it still occupies its range."""
    try:
        return codecs.decode_ipam_block(kv.key, kv.value)
    except codecs.ResourceError as exc:
        log.warning("skipping %s", exc)
        return None


def _is_mine(block: IPAMBlockResource | None, node: str) -> bool:
    return block is not None and block.node == node and not block.deleted


async def _scan_blocks(
    datastore: Datastore, node: str, family: IPFamily
) -> tuple[list[CIDR], list[CIDR]]:
    """Every block of the family (readable or not: each occupies its range), and the node's own
    blocks by their `affinity` field, lowest first.

    Only the keys are parsed; a value is decoded only if it may name the node (the text
    `host:<node>` is in it, or a JSON escape that could hide it), so a scan of 10,000 blocks
    decodes one or two of them.
    """
    occupied: list[CIDR] = []
    mine: list[CIDR] = []
    needle = f"host:{node}".encode()
    listed, _ = await datastore.list_prefix(layout.ipam_blocks_prefix(family))
    for kv in listed:
        cidr = layout.parse_block_key(kv.key)
        if cidr is None:
            continue
        occupied.append(cidr)
        if (needle in kv.value or b"\\" in kv.value) and _is_mine(_decode_block(kv), node):
            mine.append(cidr)
    return occupied, sorted(mine, key=_cidr_order)


async def claim_block(
    datastore: Datastore, node: str, family: IPFamily, pools: Iterable[IPPoolResource]
) -> CIDR | None:
    """The node's block of `family` in an enabled pool, claiming the first free one if it has none.

    None when no enabled pool of the family has a free block. A block the node already owns is
    returned as is (its missing affinity key, if any, is recreated).

    The node's affinity keys are read first: when one names a block of an enabled pool that the
    node owns, that block is the answer (the usual case, a listing of the node's few affinities
    and one read). Every block of the family is listed only when the node must claim one, or
    repair a block without its affinity key or an affinity without its block.
    """
    eligible = usable_pools(pools, family)
    if not eligible:
        return None
    affinities = await _affinities(datastore, node, family)
    for cidr in sorted(affinities, key=_cidr_order):
        if _in_pools(cidr, eligible):
            kv = await datastore.get(layout.ipam_block_key(cidr))
            if kv is not None and _is_mine(_decode_block(kv), node):
                return cidr
    occupied, mine = await _scan_blocks(datastore, node, family)
    for cidr in mine:
        if _in_pools(cidr, eligible):
            if cidr not in affinities:
                affinity_key = layout.block_affinity_key(node, cidr)
                await datastore.txn({affinity_key: 0}, {affinity_key: _dump(_AFFINITY_VALUE)})
            return cidr
    # An affinity without its block: a claim that stopped half-way (Calico writes the affinity
    # first). Finish it rather than leave the range unusable.
    existing = set(occupied)
    for cidr, kv in sorted(affinities.items(), key=lambda item: _cidr_order(item[0])):
        if cidr not in existing and _in_pools(cidr, eligible):
            claimed = await _create_block(datastore, node, cidr, affinity_revision=kv.mod_revision)
            if claimed:
                return cidr
    return await _claim_free_block(datastore, node, eligible, occupied)


async def _create_block(
    datastore: Datastore, node: str, cidr: CIDR, affinity_revision: int = 0
) -> bool:
    block_key = layout.ipam_block_key(cidr)
    affinity_key = layout.block_affinity_key(node, cidr)
    won = await datastore.txn(
        {block_key: 0, affinity_key: affinity_revision},
        {block_key: _new_block(cidr, node), affinity_key: _dump(_AFFINITY_VALUE)},
    )
    if won:
        log.info("claimed IPAM block %s for node %s", cidr, node)
    return won


def _free_blocks(pool: IPPoolResource, occupied: Iterable[CIDR]) -> Iterator[CIDR]:
    """The pool's blocks that overlap no occupied CIDR, lowest first (lazily).

    The occupied ranges are sorted once; then one pass moves a candidate over them, jumping past
    each range it meets: O(T log T) for T occupied blocks, however many of the lowest are taken.
    """
    net = pool.cidr
    first, last = int(net.network_address), int(net.broadcast_address)
    step = 1 << (net.max_prefixlen - pool.block_size)
    taken = sorted(
        (int(c.network_address), int(c.broadcast_address))
        for c in occupied
        if c.version == net.version
    )
    make = IPv4Network if net.version == 4 else IPv6Network
    position = first  # the next candidate block starts here (the pool is aligned to `step`)
    index = 0
    while position + step - 1 <= last:
        # Ranges sorted by start: once past the ones ending before the candidate, the next
        # overlaps it iff it starts inside it.
        while index < len(taken) and taken[index][1] < position:
            index += 1
        if index < len(taken) and taken[index][0] <= position + step - 1:
            end = taken[index][1]
            position = (end // step + 1) * step  # the first block after that range
            continue
        yield make((position, pool.block_size))
        position += step


async def _claim_free_block(
    datastore: Datastore, node: str, pools: Sequence[IPPoolResource], occupied: list[CIDR]
) -> CIDR | None:
    for pool in pools:
        for candidate in _free_blocks(pool, occupied):
            if await _create_block(datastore, node, candidate):
                return candidate
            log.debug("lost the race for block %s, trying the next one", candidate)
    log.warning("no free %s IPAM block left for node %s", IPFamily.of(pools[0].cidr).label, node)
    return None


# ---- tunnel address ------------------------------------------------------------------------------


def tunnel_secondary(node: str, family: IPFamily) -> dict[str, str]:
    """The allocation attributes Calico gives a node's WireGuard tunnel address."""
    return {"node": node, "type": TUNNEL_ATTRIBUTE_TYPE[family]}


async def allocate_tunnel_address(
    datastore: Datastore, node: str, family: IPFamily, block: CIDR
) -> IPAddress:
    """The node's WireGuard tunnel address in `block`, allocating one if the handle has none there.

    Idempotent: the address the handle already holds in the block is returned unchanged. Whatever
    the handle holds in other blocks is released in the same transaction, so a node never has
    more than one tunnel address per family.
    """
    if IPFamily.of(block) is not family:
        raise ValueError(f"block {block} is not {family.label}")
    return await allocate_address(
        datastore,
        node,
        block,
        layout.wireguard_handle_id(node, family),
        tunnel_secondary(node, family),
        what="WireGuard tunnel address",
        conflict_label=f"tunnel address of node {node}",
    )


async def allocate_address(
    datastore: Datastore,
    node: str,
    block: CIDR,
    handle_id: str,
    secondary: dict[str, str],
    *,
    what: str = "address",
    conflict_label: str | None = None,
) -> IPAddress:
    """One address for `handle_id` in `block` (affine to `node`), as Calico's `autoAssign` does.

    The generic form of `allocate_tunnel_address` (a pod's address is one handle per pod, with the
    CNI plugin's attributes in `secondary`). Idempotent: the address the handle already holds in the
    block is returned unchanged; what it holds in other blocks is released in the same
    transaction. `what` names the address in the log line, `conflict_label` in the error raised
    after `MAX_ATTEMPTS` write conflicts.
    """
    for _ in range(MAX_ATTEMPTS):
        handle = await _read_handle(datastore, handle_id)
        block_kv = await datastore.get(layout.ipam_block_key(block))
        if block_kv is None:
            raise IPAMError(f"IPAM block {block} does not exist")
        target = _Block(block_kv)
        if target.node != node or target.deleted:
            raise IPAMError(f"IPAM block {block} is not affine to node {node}")
        expect = {handle.key: handle.revision, target.key: target.revision}
        puts: dict[str, bytes] = {}
        await _release_elsewhere(datastore, handle, handle_id, block, expect, puts)
        ordinals = target.ordinals_of_handle(handle_id)
        if not ordinals:
            first = target.assign_first_free(handle_id, secondary)
            if first is None:
                raise IPAMError(f"IPAM block {block} has no free address for node {node}")
            ordinals = [first]
            puts[target.key] = target.encode()
        handle.set_count(block, len(ordinals))
        encoded = handle.encode()
        if encoded != handle.original:
            puts[handle.key] = encoded
        address = target.address(ordinals[0])
        if not puts or await datastore.txn(expect, puts):
            if puts:
                log.info("allocated %s %s to node %s", what, address, node)
            return address
    label = conflict_label or f"handle {handle_id}"
    raise IPAMError(f"{label}: gave up after {MAX_ATTEMPTS} write conflicts")


async def _release_elsewhere(
    datastore: Datastore,
    handle: _Handle,
    handle_id: str,
    keep: CIDR | None,
    expect: dict[str, int],
    puts: dict[str, bytes],
) -> list[IPAddress]:
    """Release the handle's addresses in every block but `keep`, adding the writes to `puts`."""
    released: list[IPAddress] = []
    for cidr in list(handle.counts):
        if cidr == keep:
            continue
        kv = await datastore.get(layout.ipam_block_key(cidr))
        handle.set_count(cidr, 0)
        if kv is None:
            expect[layout.ipam_block_key(cidr)] = 0
            continue
        other = _Block(kv)
        expect[other.key] = other.revision
        ordinals = other.release_handle(handle_id)
        if ordinals:
            puts[other.key] = other.encode()
            released.extend(other.address(o) for o in ordinals)
    return released


async def release_tunnel_address(
    datastore: Datastore, node: str, family: IPFamily
) -> list[IPAddress]:
    """Release the node's tunnel address(es) of `family` and delete the handle; what was freed.

    Idempotent: with no handle there is nothing to do.
    """
    handle_id = layout.wireguard_handle_id(node, family)
    for _ in range(MAX_ATTEMPTS):
        handle = await _read_handle(datastore, handle_id)
        if handle.original is None:
            return []
        expect = {handle.key: handle.revision}
        puts: dict[str, bytes] = {}
        released = await _release_elsewhere(datastore, handle, handle_id, None, expect, puts)
        if await datastore.txn(expect, puts, [handle.key]):
            if released:
                addresses = ", ".join(str(a) for a in released)
                log.info("released WireGuard tunnel address %s of node %s", addresses, node)
            return released
    raise IPAMError(f"tunnel address of node {node}: gave up after {MAX_ATTEMPTS} write conflicts")


async def owns_tunnel_address(
    datastore: Datastore, node: str, family: IPFamily, address: IPAddress
) -> bool:
    """Whether `address` is allocated in an IPAM block with this node's tunnel attributes
    (`node` and `type`, as Calico checks before keeping an existing tunnel address).

    The node's tunnel handle names the block that holds its address: that block is read first,
    and when it shows the allocation, that is the answer (two reads). Otherwise the address's
    block is looked up among every block of the family.
    """
    if address.version != family.value:
        return False
    wanted = tunnel_secondary(node, family)
    try:
        handle = await _read_handle(datastore, layout.wireguard_handle_id(node, family))
    except IPAMError:
        handle = None  # unreadable: the full lookup below decides
    for cidr in [] if handle is None else handle.counts:
        if address.version == cidr.version and address in cidr:
            kv = await datastore.get(layout.ipam_block_key(cidr))
            if kv is not None and _allocated_with(kv, address, wanted):
                return True
    listed, _ = await datastore.list_prefix(layout.ipam_blocks_prefix(family))
    for kv in listed:
        block = layout.parse_block_key(kv.key)
        if block is not None and address in block:
            return _allocated_with(kv, address, wanted)
    return False


def _allocated_with(kv: KeyValue, address: IPAddress, wanted: dict[str, str]) -> bool:
    """Whether the block at `kv` allocates `address` with (at least) the `wanted` secondary
    attributes; False (logged) when the block is unreadable."""
    try:
        block = _Block(kv)
    except IPAMError as exc:
        log.warning("%s", exc)
        return False
    ordinal = block.ordinal(address)
    attribute = None if ordinal is None else block.attribute_of(ordinal)
    if attribute is None:
        return False
    secondary = attribute.get("secondary")
    return isinstance(secondary, dict) and all(secondary.get(k) == v for k, v in wanted.items())
