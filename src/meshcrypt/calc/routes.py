"""Route sources, and how the sources of one CIDR combine into one RouteUpdate.

Every resource that asks for a route is a *source* of that route's CIDR: an IPAM block (its CIDR), a
workload endpoint (each of its /32 or /128), a node (each host address, and separately each WireGuard
tunnel address), an IP pool (its CIDR, as CIDR_INFO). Routes are keyed by the exact CIDR, so a tunnel
/32 inside a block is its own route and never takes the block's types (as in Felix's L3 resolver).

One CIDR may have several sources (a workload /32 that is also a tunnel address, two nodes claiming
one host address). Its RouteUpdate then carries:

* `types`: the OR of every source's bit, local or remote by the node the source names;
* `dst_node_name`: the node of the most specific source, host > tunnel > workload endpoint > block >
  pool; between sources of the same kind, the lowest (node name, resource key), so the answer does
  not depend on the order events arrived in;
* `dst_node_ip`: that node's address of the CIDR's family, or "" when the node is unknown;
* `borrowed`: some workload endpoint of the CIDR sits in a block affine to another node;
* `tunnel_wireguard`: some source is a WireGuard tunnel address.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping

from meshcrypt.model.messages import RouteType, RouteUpdate
from meshcrypt.model.net import CIDR


class SourceKind(enum.IntEnum):
    """What asks for a route. A higher value is more specific: it names the route's node."""

    POOL = 0
    BLOCK = 1
    WORKLOAD = 2
    TUNNEL = 3
    HOST = 4


SourceId = tuple[SourceKind, str]
"""A source: its kind and the key of its resource (pool name, block key, endpoint key, node name)."""

NO_CIDRS: frozenset[CIDR] = frozenset()
_NO_SOURCES: Mapping[SourceId, str] = {}

_BITS: dict[SourceKind, tuple[int, int]] = {
    # kind: (bit when the source names this host, bit when it names another node)
    SourceKind.POOL: (RouteType.CIDR_INFO.value, RouteType.CIDR_INFO.value),
    SourceKind.BLOCK: (RouteType.LOCAL_WORKLOAD.value, RouteType.REMOTE_WORKLOAD.value),
    SourceKind.WORKLOAD: (RouteType.LOCAL_WORKLOAD.value, RouteType.REMOTE_WORKLOAD.value),
    SourceKind.TUNNEL: (RouteType.LOCAL_TUNNEL.value, RouteType.REMOTE_TUNNEL.value),
    SourceKind.HOST: (RouteType.LOCAL_HOST.value, RouteType.REMOTE_HOST.value),
}


#: The sources of one CIDR: a single (source, node) pair — by far the most common case, kept as a
#: tuple because a dict per CIDR is four times its size — or a dict of them.
_Sources = tuple[SourceId, str] | dict[SourceId, str]


class RouteSources:
    """Which sources ask for which CIDRs, and which sources name which node.

    Each source replaces its whole set of CIDRs at once (`set`), adding the CIDRs whose sources
    changed to the caller's dirty set, so the caller re-resolves only those. The cost is
    proportional to the source's own CIDRs, never to the size of the table.

    Memory is per CIDR and per source, so the common cases are stored small: a CIDR with one
    source holds a pair, not a dict; a source's CIDRs are a tuple, not a set.
    """

    def __init__(self) -> None:
        self._at: dict[CIDR, _Sources] = {}
        self._owned: dict[SourceId, tuple[str, tuple[CIDR, ...]]] = {}
        # node -> the sources naming it; a change of the node's address changes `dst_node_ip` of
        # exactly their CIDRs.
        self._naming: dict[str, set[SourceId]] = {}

    def set(self, source: SourceId, node: str, cidrs: frozenset[CIDR], dirty: set[CIDR]) -> None:
        """Make `source` ask for exactly `cidrs` on behalf of `node` ("" for none), and add the
        CIDRs whose set of sources changed to `dirty`."""
        old_node, old_cidrs = self._owned.get(source, ("", ()))
        if old_node == node:
            if len(old_cidrs) == len(cidrs) and all(c in cidrs for c in old_cidrs):
                return
            gone = [c for c in old_cidrs if c not in cidrs]
            added = [c for c in cidrs if c not in old_cidrs]
        else:  # every CIDR changes its node: re-add them all
            gone, added = list(old_cidrs), list(cidrs)
        for cidr in gone:
            self._drop(source, cidr)
        for cidr in added:
            self._add(source, node, cidr)
        dirty.update(gone)
        dirty.update(added)
        if old_node and (old_node != node or not cidrs):
            self._unlink(old_node, source)
        if not cidrs:
            self._owned.pop(source, None)
            return
        self._owned[source] = (node, tuple(cidrs))
        if node and old_node != node:
            self._naming.setdefault(node, set()).add(source)

    def at(self, cidr: CIDR) -> Mapping[SourceId, str]:
        """The sources of one CIDR, each with the node it names."""
        sources = self._at.get(cidr)
        if sources is None:
            return _NO_SOURCES
        if isinstance(sources, tuple):
            return {sources[0]: sources[1]}
        return sources

    def naming(self, node: str) -> Iterator[CIDR]:
        """The CIDRs that have a source naming `node`."""
        for source in self._naming.get(node, ()):
            yield from self._owned[source][1]

    def _add(self, source: SourceId, node: str, cidr: CIDR) -> None:
        sources = self._at.get(cidr)
        if sources is None or (isinstance(sources, tuple) and sources[0] == source):
            self._at[cidr] = (source, node)
        elif isinstance(sources, tuple):
            self._at[cidr] = {sources[0]: sources[1], source: node}
        else:
            sources[source] = node

    def _drop(self, source: SourceId, cidr: CIDR) -> None:
        sources = self._at[cidr]
        if isinstance(sources, tuple):
            del self._at[cidr]
            return
        del sources[source]
        if len(sources) == 1:
            self._at[cidr] = next(iter(sources.items()))

    def _unlink(self, node: str, source: SourceId) -> None:
        sources = self._naming.get(node)
        if sources is not None:
            sources.discard(source)
            if not sources:
                del self._naming[node]


def resolve_route(
    cidr: CIDR,
    sources: Mapping[SourceId, str],
    hostname: str,
    *,
    pool_active: Callable[[str], bool],
    block_owner: Callable[[CIDR], str | None],
    node_ip: Callable[[str, int], str],
) -> RouteUpdate | None:
    """The route the sources of `cidr` ask for, or None when no source is active.

    `pool_active(name)` says whether a pool still stands for its CIDR (it has no known block);
    `block_owner(cidr)` names the node of the affine block holding `cidr`; `node_ip(node, version)`
    gives a node's plain address of a family, or "".
    """
    bits = 0  # an int while combining: IntFlag arithmetic costs a Python call per operation
    best: tuple[int, str, str] | None = None
    borrowed = tunnel = False
    for (kind, key), node in sources.items():
        if kind is SourceKind.POOL and not pool_active(key):
            continue
        local_bit, remote_bit = _BITS[kind]
        bits |= local_bit if node == hostname else remote_bit
        rank = (-kind, node, key)
        if best is None or rank < best:
            best = rank
        if kind is SourceKind.TUNNEL:
            tunnel = True
        elif kind is SourceKind.WORKLOAD and not borrowed:
            owner = block_owner(cidr)
            borrowed = owner is not None and owner != node
    if best is None:
        return None
    dst_node = best[1]
    return RouteUpdate(
        dst=str(cidr),
        types=RouteType(bits),
        dst_node_name=dst_node,
        dst_node_ip=node_ip(dst_node, cidr.version) if dst_node else "",
        borrowed=borrowed,
        tunnel_wireguard=tunnel,
    )
