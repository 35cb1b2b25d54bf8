"""`meshcrypt node list`: every node with its addresses, blocks, keys and tunnel addresses.

`build_node_list` is pure: the decoded cluster in, a `NodeList` out. A key published by more than
one node is marked on each of them (the agents make none of them a peer). Resources that do not
decode are listed as skipped, with the reason, instead of stopping the listing.

JSON schema `meshcrypt/nodes/v1`:

    {"schema": "meshcrypt/nodes/v1",
     "nodes": [{"name": str, "ipv4_address": str|null, "ipv6_address": str|null,
                "addresses": [str], "blocks": [str],
                "public_key": str|null, "public_key_v6": str|null,
                "tunnel_ipv4": str|null, "tunnel_ipv6": str|null,
                "duplicate_key": bool, "duplicate_key_v6": bool}],
     "invalid": [{"key": str, "reason": str}]}
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcrypt.model.net import IPFamily
from meshcrypt.ops import text
from meshcrypt.ops.cluster import ClusterResources, InvalidResource, duplicate_keys

SCHEMA = "meshcrypt/nodes/v1"


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    ipv4_address: str | None
    ipv6_address: str | None
    addresses: tuple[str, ...]
    blocks: tuple[str, ...]
    public_key: str | None
    public_key_v6: str | None
    tunnel_ipv4: str | None
    tunnel_ipv6: str | None
    duplicate_key: bool
    duplicate_key_v6: bool

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ipv4_address": self.ipv4_address,
            "ipv6_address": self.ipv6_address,
            "addresses": list(self.addresses),
            "blocks": list(self.blocks),
            "public_key": self.public_key,
            "public_key_v6": self.public_key_v6,
            "tunnel_ipv4": self.tunnel_ipv4,
            "tunnel_ipv6": self.tunnel_ipv6,
            "duplicate_key": self.duplicate_key,
            "duplicate_key_v6": self.duplicate_key_v6,
        }


@dataclass(frozen=True, slots=True)
class NodeList:
    nodes: tuple[NodeRow, ...]
    invalid: tuple[InvalidResource, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "schema": SCHEMA,
            "nodes": [n.to_json() for n in self.nodes],
            "invalid": [{"key": bad.key, "reason": bad.reason} for bad in self.invalid],
        }


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def build_node_list(cluster: ClusterResources) -> NodeList:
    shared = {
        family: {name for names in duplicate_keys(cluster.nodes, family).values() for name in names}
        for family in IPFamily
    }
    rows = []
    for name in sorted(cluster.nodes):
        node = cluster.nodes[name]
        rows.append(
            NodeRow(
                name=name,
                ipv4_address=_text(node.ipv4_address),
                ipv6_address=_text(node.ipv6_address),
                addresses=tuple(str(a) for a in node.addresses),
                blocks=tuple(str(b) for b in cluster.node_blocks(name)),
                public_key=None if node.public_key is None else node.public_key.to_base64(),
                public_key_v6=None
                if node.public_key_v6 is None
                else node.public_key_v6.to_base64(),
                tunnel_ipv4=_text(node.wireguard_ipv4),
                tunnel_ipv6=_text(node.wireguard_ipv6),
                duplicate_key=name in shared[IPFamily.V4],
                duplicate_key_v6=name in shared[IPFamily.V6],
            )
        )
    invalid = tuple(sorted(cluster.invalid, key=lambda bad: bad.key))
    return NodeList(tuple(rows), invalid)


def _key_cell(key: str | None, duplicate: bool) -> str:
    if key is None:
        return "-"
    return f"{key} (DUPLICATE)" if duplicate else key


def render_node_list(listing: NodeList) -> str:
    headers = ["NAME", "IPV4", "IPV6", "BLOCKS", "TUNNEL", "PUBLIC KEY (IPV4)", "PUBLIC KEY (IPV6)"]
    rows = [
        [
            n.name,
            n.ipv4_address or "-",
            n.ipv6_address or "-",
            ",".join(n.blocks) or "-",
            ",".join(a for a in (n.tunnel_ipv4, n.tunnel_ipv6) if a) or "-",
            _key_cell(n.public_key, n.duplicate_key),
            _key_cell(n.public_key_v6, n.duplicate_key_v6),
        ]
        for n in listing.nodes
    ]
    lines = text.table(headers, rows) if rows else ["no nodes registered"]
    if any(n.duplicate_key or n.duplicate_key_v6 for n in listing.nodes):
        lines += [
            "",
            "DUPLICATE: several nodes publish this key, so none of them is a WireGuard peer "
            "(traffic to them is not encrypted)",
        ]
    if listing.invalid:
        lines += ["", f"skipped {len(listing.invalid)} invalid resource(s):"]
        lines += [f"  {bad.key}: {bad.reason}" for bad in listing.invalid]
    return "\n".join(lines) + "\n"
