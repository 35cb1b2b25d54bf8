"""The node's own `Node` resource: registration, tunnel addresses (contract §3).

Every write is a compare-and-swap on the Node's mod_revision that changes only the fields it is
about (`codecs.patch_json`), so fields written by Calico, an operator or a newer meshcrypt survive;
a conflict re-reads and retries. Nothing here touches `status` (that is `node_status`).

`reconcile_tunnel_address` follows Calico's tunnel address allocator (`node/pkg/allocateip`) for
the WireGuard attribute types (`reference-behavior.md` §1.4): a node gets a tunnel address of a
family once its public key of that family is published, WireGuard of that family is enabled and
host encryption is off; otherwise the address is released and removed from the Node.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from ipaddress import IPv4Interface, IPv6Interface

from meshcrypt.datastore import codecs, ipam, layout
from meshcrypt.model.errors import RetryableError
from meshcrypt.model.net import IPAddress, IPFamily
from meshcrypt.model.resources import IPPoolResource, NodeResource
from meshcrypt.ports import Datastore

log = logging.getLogger(__name__)

#: CAS attempts for the Node before `NodeUpdateConflict`.
NODE_UPDATE_ATTEMPTS = 10

_BGP_FIELD = {IPFamily.V4: "ipv4Address", IPFamily.V6: "ipv6Address"}
_TUNNEL_FIELD = {IPFamily.V4: "interfaceIPv4Address", IPFamily.V6: "interfaceIPv6Address"}


class NodeNotRegistered(RetryableError):
    """The node's `Node` resource does not exist (the agent registers it first)."""

    def __init__(self, node: str) -> None:
        super().__init__(f"node {node} is not registered (no {layout.node_key(node)})")
        self.node = node


class NodeUpdateConflict(RetryableError):
    """The Node kept changing under a compare-and-swap."""


#: A change to a Node's JSON: the new value, or None for "nothing to change".
NodeEdit = Callable[[bytes], bytes | None]


async def update_node(
    datastore: Datastore, node: str, edit: NodeEdit, attempts: int = NODE_UPDATE_ATTEMPTS
) -> bool:
    """Apply `edit` to the stored Node with compare-and-swap; True when something was written.

    Raises NodeNotRegistered when there is no Node, NodeUpdateConflict after `attempts`
    conflicts, `codecs.ResourceError` when the stored value is not a JSON object.
    """
    key = layout.node_key(node)
    for _ in range(attempts):
        kv = await datastore.get(key)
        if kv is None:
            raise NodeNotRegistered(node)
        try:
            new = edit(kv.value)
        except ValueError as exc:
            raise codecs.ResourceError(key, str(exc)) from exc
        if new is None or new == kv.value:
            return False
        if await datastore.txn({key: kv.mod_revision}, {key: new}):
            return True
        log.debug("node %s changed while updating it, retrying", node)
    raise NodeUpdateConflict(f"node {node} changed {attempts} times while updating it")


def _field(raw: bytes, path: tuple[str, ...]) -> object:
    """The value at `path` of a JSON object (None when absent or not reachable)."""
    value: object = json.loads(raw)
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


# ---- registration --------------------------------------------------------------------------------


def _new_node(name: str, ipv4: IPv4Interface | None, ipv6: IPv6Interface | None) -> bytes:
    bgp: dict[str, str] = {}
    if ipv4 is not None:
        bgp["ipv4Address"] = str(ipv4)
    if ipv6 is not None:
        bgp["ipv6Address"] = str(ipv6)
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {
        "kind": "Node",
        "apiVersion": codecs.API_VERSION,
        "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": created},
        "spec": {"bgp": bgp} if bgp else {},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _same_interface(stored: object, wanted: IPv4Interface | IPv6Interface) -> bool:
    if not isinstance(stored, str):
        return False
    try:
        return ipaddress.ip_interface(stored.strip()) == wanted
    except ValueError:
        return False


def _set_bgp_addresses(ipv4: IPv4Interface | None, ipv6: IPv6Interface | None) -> NodeEdit:
    def edit(raw: bytes) -> bytes | None:
        new = raw
        for family, wanted in ((IPFamily.V4, ipv4), (IPFamily.V6, ipv6)):
            path = ("spec", "bgp", _BGP_FIELD[family])
            if wanted is not None and not _same_interface(_field(new, path), wanted):
                new = codecs.patch_json(new, path, str(wanted))
        return None if new is raw else new

    return edit


async def ensure_node(
    datastore: Datastore,
    name: str,
    ipv4: IPv4Interface | None,
    ipv6: IPv6Interface | None,
) -> bool:
    """Register the Node, or bring its BGP addresses up to date; True when something was written.

    A family given as None leaves the stored address alone (Calico's `IP=none`: "keep the existing
    value"). Every other field, `status` included, is left as it is.
    """
    key = layout.node_key(name)
    for _ in range(NODE_UPDATE_ATTEMPTS):
        if await datastore.get(key) is None:
            if await datastore.txn({key: 0}, {key: _new_node(name, ipv4, ipv6)}):
                log.info("registered node %s (IPv4 %s, IPv6 %s)", name, ipv4, ipv6)
                return True
            continue  # created meanwhile: update it instead
        try:
            changed = await update_node(datastore, name, _set_bgp_addresses(ipv4, ipv6))
        except NodeNotRegistered:
            continue  # deleted meanwhile: create it again
        if changed:
            log.info("updated node %s addresses (IPv4 %s, IPv6 %s)", name, ipv4, ipv6)
        return changed
    raise NodeUpdateConflict(f"node {name} kept changing while registering it")


# ---- tunnel address ------------------------------------------------------------------------------


def _set_tunnel(family: IPFamily, address: IPAddress | None) -> NodeEdit:
    field = _TUNNEL_FIELD[family]

    def edit(raw: bytes) -> bytes | None:
        wireguard = _field(raw, ("spec", "wireguard"))
        stored = wireguard.get(field) if isinstance(wireguard, dict) else None
        if address is not None:
            if isinstance(stored, str) and stored.strip() == str(address):
                return None
            return codecs.patch_json(raw, ("spec", "wireguard", field), str(address))
        if stored is None:
            return None
        new = codecs.patch_json(raw, ("spec", "wireguard", field), codecs.DELETE)
        if _field(new, ("spec", "wireguard")) == {}:
            # Calico omits `spec.wireguard` when both addresses are empty.
            new = codecs.patch_json(new, ("spec", "wireguard"), codecs.DELETE)
        return new

    return edit


async def set_tunnel_address(
    datastore: Datastore, name: str, family: IPFamily, address: IPAddress | None
) -> bool:
    """Write (or, with None, remove) the Node's WireGuard interface address of `family`.

    True when something was written. Removing from a Node that does not exist is a no-op.
    """
    if address is not None and address.version != family.value:
        raise ValueError(f"{address} is not an {family.label} address")
    try:
        changed = await update_node(datastore, name, _set_tunnel(family, address))
    except NodeNotRegistered:
        if address is None:
            return False
        raise
    if changed:
        log.info("node %s %s tunnel address is now %s", name, family.label, address or "unset")
    return changed


async def _read_node(datastore: Datastore, name: str) -> NodeResource:
    key = layout.node_key(name)
    kv = await datastore.get(key)
    if kv is None:
        raise NodeNotRegistered(name)
    return codecs.decode_node(key, kv.value)


async def reconcile_tunnel_address(
    datastore: Datastore,
    name: str,
    family: IPFamily,
    *,
    wireguard_enabled: bool,
    host_encryption: bool,
    pools: Iterable[IPPoolResource],
) -> IPAddress | None:
    """Make the node's tunnel address of `family` what the contract asks for; the address.

    Wanted when WireGuard of the family is enabled, host encryption is off, the Node's public
    key of the family is published and an enabled pool allows tunnel addresses. Then an existing
    address is kept if its allocation carries this node's tunnel attributes (node + type) and it
    lies in such a pool; otherwise one is allocated in the node's block (claimed if needed) and
    written to the Node. When not wanted, the handle's addresses are released and the field
    removed. Raises NodeNotRegistered, `codecs.ResourceError` (unreadable Node), IPAMError,
    DatastoreUnavailable.
    """
    node = await _read_node(datastore, name)
    key = node.public_key if family is IPFamily.V4 else node.public_key_v6
    current = node.wireguard_ipv4 if family is IPFamily.V4 else node.wireguard_ipv6
    eligible = ipam.usable_pools(pools, family, ipam.TUNNEL_USE)
    if not wireguard_enabled or host_encryption or key is None or not eligible:
        await ipam.release_tunnel_address(datastore, name, family)
        await set_tunnel_address(datastore, name, family, None)
        return None
    if (
        current is not None
        and any(current in p.cidr for p in eligible)
        and await ipam.owns_tunnel_address(datastore, name, family, current)
    ):
        return current
    block = await ipam.claim_block(datastore, name, family, eligible)
    if block is None:
        log.warning("node %s: no free %s block for a tunnel address", name, family.label)
        await ipam.release_tunnel_address(datastore, name, family)
        await set_tunnel_address(datastore, name, family, None)
        return None
    address = await ipam.allocate_tunnel_address(datastore, name, family, block)
    await set_tunnel_address(datastore, name, family, address)
    return address
