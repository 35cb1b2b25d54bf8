"""The cluster as the operator commands see it: etcd key-values in, decoded resources out.

`decode_cluster` is pure. Like the agent, it skips a value that does not decode (bad JSON, bad key,
bad CIDR, wrong family) and keeps the key and the reason in `invalid`, so every command can say what
it skipped instead of failing. `read_cluster` lists the prefixes through the `Datastore` port.

Key ownership (`key_owners`, `duplicate_keys`) follows the manager: an all-zero or absent key is
no key, and a key claimed by two or more nodes makes none of them a peer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshcrypt.datastore import codecs, layout
from meshcrypt.datastore.codecs import BlockAffinity, JSONObject
from meshcrypt.datastore.layout import ResourceKind
from meshcrypt.model.keys import Key
from meshcrypt.model.net import CIDR, IPFamily
from meshcrypt.model.resources import (
    IPAMBlockResource,
    IPPoolResource,
    NodeResource,
    WorkloadEndpointResource,
)
from meshcrypt.ports import Datastore, KeyValue

#: What the operator commands read: the agent's watch prefixes plus block affinities.
CLUSTER_PREFIXES: tuple[str, ...] = (*layout.WATCH_PREFIXES, layout.IPAM_AFFINITIES)


@dataclass(frozen=True, slots=True)
class InvalidResource:
    """A stored value that was skipped: its key and why."""

    key: str
    reason: str


@dataclass(slots=True)
class ClusterResources:
    """Every decoded resource the operator commands use, keyed like the agent keys them."""

    nodes: dict[str, NodeResource] = field(default_factory=dict)
    blocks: dict[str, IPAMBlockResource] = field(default_factory=dict)  # canonical CIDR text
    affinities: list[BlockAffinity] = field(default_factory=list)
    pools: dict[str, IPPoolResource] = field(default_factory=dict)
    workloads: dict[str, WorkloadEndpointResource] = field(default_factory=dict)
    felix_configurations: dict[str, JSONObject] = field(default_factory=dict)  # name -> spec
    invalid: list[InvalidResource] = field(default_factory=list)

    def felix_spec(self, name: str) -> JSONObject:
        """The spec of FelixConfiguration `name`; empty when there is none."""
        return self.felix_configurations.get(name, {})

    def node_blocks(self, node: str) -> list[CIDR]:
        """The node's IPAM blocks: affine blocks and live block affinities, sorted."""
        found: set[CIDR] = {
            b.cidr for b in self.blocks.values() if b.node == node and not b.deleted
        }
        found.update(
            a.cidr
            for a in self.affinities
            if a.node == node and not a.deleted and a.state == "confirmed"
        )
        return sorted(found, key=cidr_order)


def cidr_order(cidr: CIDR) -> tuple[int, int, int]:
    return (cidr.version, int(cidr.network_address), cidr.prefixlen)


def decode_cluster(kvs: Iterable[KeyValue]) -> ClusterResources:
    """Decode every key meshcrypt knows; invalid values land in `invalid`, unknown keys are ignored."""
    out = ClusterResources()
    for kv in kvs:
        try:
            decoded = codecs.decode(kv.key, kv.value)
        except codecs.ResourceError as exc:
            out.invalid.append(InvalidResource(kv.key, exc.reason))
            continue
        if decoded is None:
            continue
        kind, value = decoded
        name = layout.classify(kv.key)
        assert name is not None  # decode() returned a value, so the key classified
        if kind is ResourceKind.NODE and isinstance(value, NodeResource):
            out.nodes[value.name] = value
        elif kind is ResourceKind.IPAM_BLOCK and isinstance(value, IPAMBlockResource):
            out.blocks[name.name] = value
        elif kind is ResourceKind.BLOCK_AFFINITY and isinstance(value, BlockAffinity):
            out.affinities.append(value)
        elif kind is ResourceKind.IP_POOL and isinstance(value, IPPoolResource):
            out.pools[value.name] = value
        elif kind is ResourceKind.WORKLOAD_ENDPOINT and isinstance(value, WorkloadEndpointResource):
            out.workloads[value.key] = value
        elif kind is ResourceKind.FELIX_CONFIGURATION and isinstance(value, dict):
            out.felix_configurations[name.name] = value
    return out


async def read_cluster(
    datastore: Datastore, prefixes: Iterable[str] = CLUSTER_PREFIXES
) -> ClusterResources:
    """List and decode the prefixes. Raises what the port raises (`DatastoreUnavailable`)."""
    kvs: list[KeyValue] = []
    for prefix in prefixes:
        found, _revision = await datastore.list_prefix(prefix)
        kvs.extend(found)
    return decode_cluster(kvs)


# ---- keys ----------------------------------------------------------------------------------------


def node_key(node: NodeResource, family: IPFamily) -> Key | None:
    """The node's published key of `family` (None for none)."""
    return node.public_key if family is IPFamily.V4 else node.public_key_v6


def key_owners(nodes: Mapping[str, NodeResource], family: IPFamily) -> dict[Key, list[str]]:
    """Every published key of `family` with the nodes that claim it, names sorted."""
    owners: dict[Key, list[str]] = {}
    for name in sorted(nodes):
        key = node_key(nodes[name], family)
        if key is not None:
            owners.setdefault(key, []).append(name)
    return owners


def duplicate_keys(nodes: Mapping[str, NodeResource], family: IPFamily) -> dict[Key, list[str]]:
    """The keys of `family` that two or more nodes claim."""
    return {k: names for k, names in key_owners(nodes, family).items() if len(names) > 1}
