"""The etcd key layout: the one place that knows how Calico's etcdv3 backend names things.

Every key meshcrypt reads, writes or watches is built by a function here, and every key seen on a
watch is parsed by `classify`. The layout (contract §2) is libcalico-go's etcdv3 one::

    /calico/resources/v3/projectcalico.org/nodes/<node>
    /calico/resources/v3/projectcalico.org/felixconfigurations/default | node.<node>
    /calico/resources/v3/projectcalico.org/ippools/<name>
    /calico/resources/v3/projectcalico.org/workloadendpoints/<namespace>/<name>
    /calico/ipam/v2/assignment/ipv4/block/10.65.0.0-26
    /calico/ipam/v2/assignment/ipv6/block/fd00:65::-122
    /calico/ipam/v2/host/<node>/ipv4/block/10.65.0.0-26
    /calico/ipam/v2/handle/<handle id>

IPAM block names: libcalico-go formats the block CIDR with Go's `net.IPNet.String()` and replaces the
one "/" with "-" (`model.BlockKey.defaultPath`); when parsing it turns the first "-" back into "/".
So an IPv6 block keeps its colons in etcd: `fd00:65::/122` is stored under `.../ipv6/block/fd00:65::-122`.
The `fd00-65---122` style (every ":" and "." also turned into "-") is `names.CIDRToName`, the
*Kubernetes resource name* of the same block in the KDD backend — never an etcd key. Go and Python
both print IPv6 in RFC 5952 compressed lower-case form, so `str(cidr)` gives the same text as Go
(IPv4-mapped IPv6 blocks, which Go prints in dotted form, are not supported).

This module is pure: no I/O, no datastore access.
"""

from __future__ import annotations

import enum
import functools
import re
from typing import NamedTuple

from meshcrypt.model.net import CIDR, IPFamily, cidr_from_int, parse_cidr

ROOT = "/calico/"
RESOURCES = "/calico/resources/v3/projectcalico.org/"
NODES = RESOURCES + "nodes/"
FELIX_CONFIGURATIONS = RESOURCES + "felixconfigurations/"
IP_POOLS = RESOURCES + "ippools/"
WORKLOAD_ENDPOINTS = RESOURCES + "workloadendpoints/"
IPAM_BLOCKS = "/calico/ipam/v2/assignment/"
IPAM_AFFINITIES = "/calico/ipam/v2/host/"
IPAM_HANDLES = "/calico/ipam/v2/handle/"

#: What the agent's syncer watches: everything the calculation and configuration need. Block
#: affinities and handles are read on demand by the IPAM code (handles grow with the pod count).
WATCH_PREFIXES: tuple[str, ...] = (
    NODES,
    FELIX_CONFIGURATIONS,
    IP_POOLS,
    WORKLOAD_ENDPOINTS,
    IPAM_BLOCKS,
)

DEFAULT_FELIX_CONFIGURATION = "default"
_NODE_CONFIG_PREFIX = "node."


class ResourceKind(enum.Enum):
    """What a key holds. Values are Calico's `kind` names (the IPAM ones have no `kind` field)."""

    NODE = "Node"
    FELIX_CONFIGURATION = "FelixConfiguration"
    IP_POOL = "IPPool"
    WORKLOAD_ENDPOINT = "WorkloadEndpoint"
    IPAM_BLOCK = "IPAMBlock"
    BLOCK_AFFINITY = "BlockAffinity"
    IPAM_HANDLE = "IPAMHandle"


class ParsedKey(NamedTuple):
    """A classified key. `name` is the identity within the kind:

    node name; FelixConfiguration name (`default`, `node.<node>`); pool name; `<namespace>/<name>`
    for a workload endpoint; the canonical CIDR (`10.65.0.0/26`) of a block; `<node>/<CIDR>` of a
    block affinity (use `parse_affinity_key` for the parts); the handle id.
    """

    kind: ResourceKind
    name: str


# ---- building keys -------------------------------------------------------------------------------


def _segment(what: str, name: str) -> str:
    """A name that can stand as one key segment."""
    if not name or "/" in name:
        raise ValueError(f"invalid {what} name {name!r}: must be non-empty and contain no '/'")
    return name


def node_key(node: str) -> str:
    return NODES + _segment("node", node)


def felix_configuration_key(name: str) -> str:
    return FELIX_CONFIGURATIONS + _segment("FelixConfiguration", name)


def node_felix_configuration_name(node: str) -> str:
    """The name of a node's own FelixConfiguration: `node.<node>`."""
    return _NODE_CONFIG_PREFIX + _segment("node", node)


def ip_pool_key(name: str) -> str:
    return IP_POOLS + _segment("IPPool", name)


def workload_endpoint_key(namespace: str, name: str) -> str:
    return (
        WORKLOAD_ENDPOINTS
        + _segment("namespace", namespace)
        + "/"
        + _segment("WorkloadEndpoint", name)
    )


def block_name(cidr: CIDR) -> str:
    """The key segment of a block: its CIDR with "/" turned into "-" (`fd00:65::-122`)."""
    return str(cidr).replace("/", "-", 1)


def _family_segment(cidr: CIDR) -> str:
    return f"ipv{IPFamily.of(cidr).value}"


def ipam_block_key(cidr: CIDR) -> str:
    return f"{IPAM_BLOCKS}{_family_segment(cidr)}/block/{block_name(cidr)}"


def ipam_blocks_prefix(family: IPFamily) -> str:
    """Every block of one family."""
    return f"{IPAM_BLOCKS}ipv{family.value}/block/"


def block_affinity_key(node: str, cidr: CIDR) -> str:
    node = _segment("node", node)
    return f"{IPAM_AFFINITIES}{node}/{_family_segment(cidr)}/block/{block_name(cidr)}"


def block_affinities_prefix(node: str, family: IPFamily) -> str:
    """Every block affinity of one node and family."""
    return f"{IPAM_AFFINITIES}{_segment('node', node)}/ipv{family.value}/block/"


def ipam_handle_key(handle_id: str) -> str:
    return IPAM_HANDLES + _segment("IPAM handle", handle_id)


def wireguard_handle_id(node: str, family: IPFamily) -> str:
    """Calico's IPAM handle of a node's WireGuard tunnel address."""
    node = _segment("node", node)
    if family is IPFamily.V4:
        return f"wireguard-tunnel-addr-{node}"
    return f"wireguard-v6-tunnel-addr-{node}"


# ---- parsing keys --------------------------------------------------------------------------------


#: What `block_name` writes for an IPv4 block: dotted decimal without leading zeros, "-", prefix.
_IPV4_BLOCK_NAME = re.compile(
    r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})"
    r"-(0|[1-9][0-9]?)"
)


@functools.lru_cache(maxsize=256)
def _parse_block_name(family_segment: str, name: str) -> CIDR | None:
    """The CIDR of a block segment, or None unless it is exactly what `block_name` would write.

    Cached: the agent parses a key up to three times in a row (classified, decoded, checked
    against its value).
    """
    if family_segment == "ipv4":
        return _parse_ipv4_block_name(name)
    if family_segment != "ipv6":
        return None
    try:
        cidr = parse_cidr(name.replace("-", "/", 1))
    except ValueError:
        return None
    if cidr.version != 6 or block_name(cidr) != name:
        return None
    return cidr


def _parse_ipv4_block_name(name: str) -> CIDR | None:
    """`_parse_block_name` of an IPv4 block: the exact text matched, the network built from
    integers (the `ipaddress` text parser and the `str()` round trip cost several times as much,
    and every key of a 10,000-block cluster passes here)."""
    match = _IPV4_BLOCK_NAME.fullmatch(name)
    if match is None:
        return None
    a, b, c, d, prefixlen = (int(part) for part in match.groups())
    if max(a, b, c, d) > 255 or prefixlen > 32:
        return None
    try:
        return cidr_from_int((a << 24) | (b << 16) | (c << 8) | d, prefixlen, IPFamily.V4)
    except ValueError:
        return None  # host bits set


def parse_block_key(key: str) -> CIDR | None:
    """The CIDR of an IPAM block key, or None when `key` is not a well-formed block key."""
    if not key.startswith(IPAM_BLOCKS):
        return None
    parts = key[len(IPAM_BLOCKS) :].split("/")
    if len(parts) != 3 or parts[1] != "block":
        return None
    return _parse_block_name(parts[0], parts[2])


def parse_affinity_key(key: str) -> tuple[str, CIDR] | None:
    """(node, CIDR) of a block affinity key, or None when it is not a well-formed one."""
    if not key.startswith(IPAM_AFFINITIES):
        return None
    parts = key[len(IPAM_AFFINITIES) :].split("/")
    if len(parts) != 4 or not parts[0] or parts[2] != "block":
        return None
    cidr = _parse_block_name(parts[1], parts[3])
    return None if cidr is None else (parts[0], cidr)


def node_of_felix_configuration(name: str) -> str | None:
    """The node a `node.<node>` FelixConfiguration belongs to; None for any other name."""
    if name.startswith(_NODE_CONFIG_PREFIX) and len(name) > len(_NODE_CONFIG_PREFIX):
        return name[len(_NODE_CONFIG_PREFIX) :]
    return None


_SIMPLE: tuple[tuple[str, ResourceKind], ...] = (
    (NODES, ResourceKind.NODE),
    (FELIX_CONFIGURATIONS, ResourceKind.FELIX_CONFIGURATION),
    (IP_POOLS, ResourceKind.IP_POOL),
    (IPAM_HANDLES, ResourceKind.IPAM_HANDLE),
)


def classify(key: str) -> ParsedKey | None:
    """What `key` holds, or None for keys meshcrypt does not use (or malformed ones)."""
    for prefix, kind in _SIMPLE:
        if key.startswith(prefix):
            name = key[len(prefix) :]
            return ParsedKey(kind, name) if name and "/" not in name else None
    if key.startswith(WORKLOAD_ENDPOINTS):
        parts = key[len(WORKLOAD_ENDPOINTS) :].split("/")
        if len(parts) == 2 and all(parts):
            return ParsedKey(ResourceKind.WORKLOAD_ENDPOINT, f"{parts[0]}/{parts[1]}")
        return None
    block = parse_block_key(key)
    if block is not None:
        # The segment is exactly `block_name(block)`: its first "-" back to "/" is `str(block)`.
        name = key.rsplit("/", 1)[1].replace("-", "/", 1)
        return ParsedKey(ResourceKind.IPAM_BLOCK, name)
    affinity = parse_affinity_key(key)
    if affinity is not None:
        node, cidr = affinity
        return ParsedKey(ResourceKind.BLOCK_AFFINITY, f"{node}/{cidr}")
    return None
