"""The calculation: Calico resources in, deduplicated dataplane messages out (`reference-behavior.md` §1.2).

`Calculator` keeps the resources it was given and, for each message it could emit (host metadata and
the two WireGuard endpoints per node, one route per CIDR), what it last sent. An event only records
which nodes and which CIDRs it touched; `flush()` recomputes just those, compares them with what was
sent and emits the differences. So the cost of an event is proportional to the resource it carries
(a node's addresses and the routes naming it, a block's workload addresses), never to the cluster,
and a change that cancels out before the flush emits nothing.

Messages:

* `HostMetadataUpdate` per node with an address (see `hosts`); `HostMetadataRemove` when a node that
  was sent is deleted or has no address left.
* `WireguardEndpointUpdate` / `WireguardEndpointV6Update` per node with a key of that family, the
  local node included; the matching Remove when the key or the node goes, if an update was sent.
* `RouteUpdate` per CIDR with at least one active source (see `routes`): affine IPAM blocks,
  workload endpoint addresses, node host addresses, WireGuard tunnel addresses, and IP pools
  (CIDR_INFO) as long as no known affine block lies inside the pool — once a block exists, the
  block's own route describes that address space, so the pool route is withdrawn. A block without
  affinity, or marked deleted, is treated as absent. `RouteRemove` when a CIDR sent before loses its
  last source.

Order within one flush is fixed, each group sorted by host name or CIDR:

1. `WireguardEndpointRemove`, `WireguardEndpointV6Remove`, `RouteRemove`: what is released is
   released before anything claims it, so a key or a CIDR moving from one node to another never
   reads as two owners at once;
2. host metadata: a peer's endpoint address is known before its key arrives;
3. WireGuard endpoint updates: a route's node is a known peer before its routes arrive;
4. `RouteUpdate`.

The managers batch everything until `apply()`, so the order is not needed for correctness; it makes
the message stream readable and two runs comparable.

`snapshot()` repeats everything flushed so far as updates, for a consumer that starts from nothing
(a WireGuard manager re-created after a configuration change).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TypeVar

from meshcrypt.calc import hosts
from meshcrypt.calc.blocks import AffineBlocks, ContainmentIndex, within
from meshcrypt.calc.routes import NO_CIDRS, RouteSources, SourceKind, resolve_route
from meshcrypt.model.messages import (
    DataplaneMessage,
    HostMetadataRemove,
    HostMetadataUpdate,
    RouteRemove,
    RouteUpdate,
    WireguardEndpointRemove,
    WireguardEndpointUpdate,
    WireguardEndpointV6Remove,
    WireguardEndpointV6Update,
)
from meshcrypt.model.net import CIDR, IPFamily
from meshcrypt.model.resources import (
    IPAMBlockResource,
    IPPoolResource,
    NodeResource,
    WorkloadEndpointResource,
)

log = logging.getLogger(__name__)

_K = TypeVar("_K")
_M = TypeVar("_M")


def _record(sent: dict[_K, _M], key: _K, desired: _M | None) -> bool:
    """Record `desired` as sent for `key`; True when it differs from what was sent before."""
    if sent.get(key) == desired:
        return False
    if desired is None:
        del sent[key]
    else:
        sent[key] = desired
    return True


def _cidr_order(cidr: CIDR) -> tuple[int, int, int]:
    return (cidr.version, int(cidr.network_address), cidr.prefixlen)


@dataclass(slots=True)
class _Batch:
    """One flush's messages, grouped in the order they are emitted."""

    endpoint_removals: list[DataplaneMessage] = field(default_factory=list)
    route_removals: list[DataplaneMessage] = field(default_factory=list)
    metadata: list[DataplaneMessage] = field(default_factory=list)
    endpoints: list[DataplaneMessage] = field(default_factory=list)
    routes: list[DataplaneMessage] = field(default_factory=list)

    def messages(self) -> list[DataplaneMessage]:
        return [
            *self.endpoint_removals,
            *self.route_removals,
            *self.metadata,
            *self.endpoints,
            *self.routes,
        ]

    def summary(self) -> str:
        return (
            f"{len(self.endpoint_removals)} endpoint removals, "
            f"{len(self.route_removals)} route removals, {len(self.metadata)} host metadata, "
            f"{len(self.endpoints)} endpoint updates, {len(self.routes)} route updates"
        )


class Calculator:
    """Turns resource events for one host into deduplicated dataplane messages."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self._nodes: dict[str, NodeResource] = {}
        self._node_ips: dict[str, tuple[str, str]] = {}  # plain IPv4, IPv6 address of each node
        self._weps: dict[str, WorkloadEndpointResource] = {}
        self._pools: dict[str, IPPoolResource] = {}
        self._pool_blocks: dict[str, int] = {}  # pool name -> affine blocks inside it
        self._blocks = AffineBlocks()
        self._sources = RouteSources()
        self._workload_cidrs = ContainmentIndex()

        self._dirty_nodes: set[str] = set()
        self._dirty_routes: set[CIDR] = set()

        self._sent_hosts: dict[str, HostMetadataUpdate] = {}
        self._sent_v4: dict[str, WireguardEndpointUpdate] = {}
        self._sent_v6: dict[str, WireguardEndpointV6Update] = {}
        self._sent_routes: dict[CIDR, RouteUpdate] = {}

    # --- inputs: a value upserts, None deletes ---------------------------------------------------

    def on_node(self, name: str, node: NodeResource | None) -> None:
        old = self._nodes.get(name)
        if node == old:
            return
        old_ips = self._node_ips.get(name, ("", ""))
        if node is None:
            del self._nodes[name]
            del self._node_ips[name]
        else:
            self._nodes[name] = node
            self._node_ips[name] = hosts.node_ips(node)
        self._dirty_nodes.add(name)
        host = NO_CIDRS if node is None else hosts.host_cidrs(node)
        tunnel = NO_CIDRS if node is None else hosts.tunnel_cidrs(node)
        self._sources.set((SourceKind.HOST, name), name, host, self._dirty_routes)
        self._sources.set((SourceKind.TUNNEL, name), name, tunnel, self._dirty_routes)
        if self._node_ips.get(name, ("", "")) != old_ips:
            # `dst_node_ip` of every route naming this node.
            self._dirty_routes.update(self._sources.naming(name))

    def on_block(self, cidr_key: str, block: IPAMBlockResource | None) -> None:
        new: tuple[CIDR, str] | None = None
        if block is not None and not block.deleted and block.node:
            new = (block.cidr, block.node)
        old = self._blocks.get(cidr_key)
        if new == old:
            return
        if old is not None:
            self._blocks.remove(cidr_key)
            self._count_pool_blocks(old[0], -1)
            # Workload addresses in the block may stop (or start) being borrowed.
            self._dirty_routes.update(self._workload_cidrs.inside(old[0]))
        if new is not None:
            self._blocks.set(cidr_key, *new)
            self._count_pool_blocks(new[0], +1)
            self._dirty_routes.update(self._workload_cidrs.inside(new[0]))
        node, cidrs = ("", NO_CIDRS) if new is None else (new[1], frozenset((new[0],)))
        self._sources.set((SourceKind.BLOCK, cidr_key), node, cidrs, self._dirty_routes)

    def on_pool(self, name: str, pool: IPPoolResource | None) -> None:
        old = self._pools.get(name)
        if pool == old:
            return
        if pool is None:
            del self._pools[name]
            del self._pool_blocks[name]
            cidrs = NO_CIDRS
        else:
            self._pools[name] = pool
            if old is None or old.cidr != pool.cidr:
                self._pool_blocks[name] = self._blocks.count_inside(pool.cidr)
            cidrs = frozenset((pool.cidr,))
        self._sources.set((SourceKind.POOL, name), "", cidrs, self._dirty_routes)

    def on_workload(self, key: str, wep: WorkloadEndpointResource | None) -> None:
        old = self._weps.get(key)
        if wep == old:
            return
        old_cidrs = NO_CIDRS if old is None else frozenset(old.ip_networks)
        new_cidrs = NO_CIDRS if wep is None else frozenset(wep.ip_networks)
        if wep is None:
            del self._weps[key]
        else:
            self._weps[key] = wep
        for cidr in new_cidrs - old_cidrs:
            self._workload_cidrs.add(cidr)
        for cidr in old_cidrs - new_cidrs:
            self._workload_cidrs.discard(cidr)
        node = "" if wep is None else wep.node
        self._sources.set((SourceKind.WORKLOAD, key), node, new_cidrs, self._dirty_routes)

    # --- output ----------------------------------------------------------------------------------

    def flush(self) -> list[DataplaneMessage]:
        """The messages describing what changed since the last flush, in the module's order."""
        batch = _Batch()
        for name in sorted(self._dirty_nodes):
            self._flush_node(name, batch)
        for cidr in sorted(self._dirty_routes, key=_cidr_order):
            route = self._resolve(cidr)
            if _record(self._sent_routes, cidr, route):
                if route is None:
                    batch.route_removals.append(RouteRemove(str(cidr)))
                else:
                    batch.routes.append(route)
        self._dirty_nodes.clear()
        self._dirty_routes.clear()
        messages = batch.messages()
        if messages and log.isEnabledFor(logging.DEBUG):
            log.debug("Flush: %s", batch.summary())
        return messages

    def snapshot(self) -> list[DataplaneMessage]:
        """Everything sent by the flushes so far, as updates, in flush order.

        For a consumer that starts from nothing, such as a WireGuard manager re-created after a
        configuration change. Changes not yet flushed are not included.
        """
        batch = _Batch()
        for name in sorted(self._sent_hosts.keys() | self._sent_v4.keys() | self._sent_v6.keys()):
            if (host := self._sent_hosts.get(name)) is not None:
                batch.metadata.append(host)
            if (v4 := self._sent_v4.get(name)) is not None:
                batch.endpoints.append(v4)
            if (v6 := self._sent_v6.get(name)) is not None:
                batch.endpoints.append(v6)
        batch.routes.extend(
            self._sent_routes[cidr] for cidr in sorted(self._sent_routes, key=_cidr_order)
        )
        return batch.messages()

    def _flush_node(self, name: str, batch: _Batch) -> None:
        node = self._nodes.get(name)
        host = None if node is None else hosts.host_metadata(node)
        if _record(self._sent_hosts, name, host):
            batch.metadata.append(HostMetadataRemove(name) if host is None else host)
        v4 = None if node is None else hosts.endpoint_v4(node)
        if _record(self._sent_v4, name, v4):
            if v4 is None:
                batch.endpoint_removals.append(WireguardEndpointRemove(name))
            else:
                batch.endpoints.append(v4)
        v6 = None if node is None else hosts.endpoint_v6(node)
        if _record(self._sent_v6, name, v6):
            if v6 is None:
                batch.endpoint_removals.append(WireguardEndpointV6Remove(name))
            else:
                batch.endpoints.append(v6)

    # --- route resolution ------------------------------------------------------------------------

    def _resolve(self, cidr: CIDR) -> RouteUpdate | None:
        return resolve_route(
            cidr,
            self._sources.at(cidr),
            self.hostname,
            pool_active=self._pool_active,
            block_owner=self._blocks.owner_of,
            node_ip=self._node_ip,
        )

    def _pool_active(self, name: str) -> bool:
        return self._pool_blocks.get(name, 0) == 0

    def _node_ip(self, name: str, version: int) -> str:
        ips = self._node_ips.get(name)
        if ips is None:
            return ""
        return ips[0] if version == IPFamily.V4 else ips[1]

    def _count_pool_blocks(self, block: CIDR, delta: int) -> None:
        """Count a block in or out of every pool holding it; a pool's CIDR_INFO route appears
        when its count drops to zero and goes when it leaves zero."""
        for name, pool in self._pools.items():
            if within(block, pool.cidr):
                before = self._pool_blocks[name]
                self._pool_blocks[name] = before + delta
                if (before == 0) != (before + delta == 0):
                    self._dirty_routes.add(pool.cidr)
