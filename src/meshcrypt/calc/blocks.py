"""Containment questions between CIDRs, answered without scanning every block or endpoint.

Two questions come up on every event and must not cost a pass over the cluster:

* which affine block holds this workload address (is the address borrowed)? -> `AffineBlocks`;
* which workload addresses lie in this block (their `borrowed` flag may change with the block)?
  -> `ContainmentIndex`.

Both bucket CIDRs by their supernet at the prefix lengths blocks actually use (one or two in a real
cluster: /26 for IPv4, /122 for IPv6 by default), so a lookup is a few dictionary probes.
"""

from __future__ import annotations

from collections.abc import Set

from meshcrypt.model.net import CIDR

_EMPTY: frozenset[CIDR] = frozenset()


def within(inner: CIDR, outer: CIDR) -> bool:
    """Whether `inner` lies inside `outer` (or is it); False across families.

    `subnet_of`, computed on the integers: it would build both broadcast addresses, a cost that
    shows when every block of a 10,000-node cluster is counted into its pool.
    """
    return (
        inner.version == outer.version
        and inner.prefixlen >= outer.prefixlen
        and int(inner.network_address) & int(outer.netmask) == int(outer.network_address)
    )


class AffineBlocks:
    """The known IPAM blocks that have an affine node, by key and by CIDR."""

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[CIDR, str]] = {}
        # cidr -> (block key, node), or {block key: node} in the rare case of several keys
        self._at: dict[CIDR, tuple[str, str] | dict[str, str]] = {}
        self._prefixlens: dict[tuple[int, int], int] = {}  # (version, prefixlen) -> blocks
        self._longest_first: dict[int, list[int]] = {4: [], 6: []}

    def get(self, key: str) -> tuple[CIDR, str] | None:
        """The CIDR and node of a block, or None when it is unknown or has no affinity."""
        return self._by_key.get(key)

    def set(self, key: str, cidr: CIDR, node: str) -> None:
        self.remove(key)
        self._by_key[key] = (cidr, node)
        found = self._at.get(cidr)
        if found is None:
            self._at[cidr] = (key, node)  # a dict per block would be four times the size
        elif isinstance(found, tuple):
            self._at[cidr] = {found[0]: found[1], key: node}
        else:
            found[key] = node
        level = (cidr.version, cidr.prefixlen)
        self._prefixlens[level] = self._prefixlens.get(level, 0) + 1
        if self._prefixlens[level] == 1:
            self._sort_levels(cidr.version)

    def remove(self, key: str) -> None:
        entry = self._by_key.pop(key, None)
        if entry is None:
            return
        cidr = entry[0]
        found = self._at[cidr]
        if isinstance(found, tuple):
            del self._at[cidr]
        else:
            del found[key]
            if len(found) == 1:
                self._at[cidr] = next(iter(found.items()))
        level = (cidr.version, cidr.prefixlen)
        self._prefixlens[level] -= 1
        if not self._prefixlens[level]:
            del self._prefixlens[level]
            self._sort_levels(cidr.version)

    def owner_of(self, cidr: CIDR) -> str | None:
        """The node of the most specific block holding `cidr` (lowest key on a tie), or None."""
        for prefixlen in self._longest_first[cidr.version]:
            if prefixlen > cidr.prefixlen:
                continue
            found = self._at.get(cidr.supernet(new_prefix=prefixlen))
            if isinstance(found, tuple):
                return found[1]
            if found:
                return found[min(found)]
        return None

    def count_inside(self, net: CIDR) -> int:
        """How many blocks lie inside `net`. A pass over all blocks: used when a pool changes."""
        return sum(1 for cidr, _ in self._by_key.values() if within(cidr, net))

    def _sort_levels(self, version: int) -> None:
        self._longest_first[version] = sorted(
            (plen for ver, plen in self._prefixlens if ver == version), reverse=True
        )


class ContainmentIndex:
    """A multiset of CIDRs that lists its members inside a given network in time of the answer.

    Members are bucketed by their supernet at every (family, prefix length) asked about so far; a
    new prefix length costs one pass over the members, then stays indexed.
    """

    def __init__(self) -> None:
        self._count: dict[CIDR, int] = {}
        self._levels: dict[tuple[int, int], dict[CIDR, set[CIDR]]] = {}

    def add(self, cidr: CIDR) -> None:
        count = self._count.get(cidr, 0)
        self._count[cidr] = count + 1
        if count:
            return
        for (version, prefixlen), buckets in self._levels.items():
            if version == cidr.version and prefixlen <= cidr.prefixlen:
                buckets.setdefault(cidr.supernet(new_prefix=prefixlen), set()).add(cidr)

    def discard(self, cidr: CIDR) -> None:
        count = self._count.get(cidr, 0)
        if count > 1:
            self._count[cidr] = count - 1
            return
        if not count:
            return
        del self._count[cidr]
        for (version, prefixlen), buckets in self._levels.items():
            if version == cidr.version and prefixlen <= cidr.prefixlen:
                bucket_key = cidr.supernet(new_prefix=prefixlen)
                bucket = buckets[bucket_key]
                bucket.discard(cidr)
                if not bucket:
                    del buckets[bucket_key]

    def inside(self, net: CIDR) -> Set[CIDR]:
        """The members that lie inside `net` (including `net` itself)."""
        level = (net.version, net.prefixlen)
        buckets = self._levels.get(level)
        if buckets is None:
            buckets = {}
            for cidr in self._count:
                if cidr.version == net.version and cidr.prefixlen >= net.prefixlen:
                    buckets.setdefault(cidr.supernet(new_prefix=net.prefixlen), set()).add(cidr)
            self._levels[level] = buckets
        return buckets.get(net, _EMPTY)
