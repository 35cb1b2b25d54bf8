"""Decoding and validation of the JSON values stored under the Calico keys (contract §2).

Every `decode_*` function takes the etcd key and its raw value and returns a valid value, or raises
`ResourceError(key, reason)`: bad JSON, wrong `kind`/`apiVersion`, a name that disagrees with the
key, a bad CIDR or address, an address of the wrong family, a public key that is not base64 of 32
bytes, a block whose `cidr` does not match its key, a field of the wrong JSON type. The consumer logs
the error once (it names the key and the reason) and skips that one resource.

Leniencies that follow Felix: `""`, `null` and an absent field mean "not set"; a BGP address without a
prefix length is ignored (Felix takes only the CIDR form); an all-zero public key means "no key".

`patch_json` is the write side: it changes one nested field of a stored value and keeps every other
field, including the ones meshcrypt does not know, so read-modify-write never loses data.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import Final, TypeAlias, TypeVar

from meshcrypt.datastore import layout
from meshcrypt.datastore.layout import ResourceKind
from meshcrypt.model.errors import PermanentError
from meshcrypt.model.keys import Key, KeyFormatError
from meshcrypt.model.net import (
    CIDR,
    IPAddress,
    IPFamily,
    fast_ipv4,
    is_host_cidr,
    parse_cidr,
    parse_cidr_loose,
    parse_ip_or_cidr_address,
)
from meshcrypt.model.resources import (
    IPAMBlockResource,
    IPInterface,
    IPPoolResource,
    NodeResource,
    WorkloadEndpointResource,
)

API_VERSION = "projectcalico.org/v3"

JSONObject: TypeAlias = dict[str, object]


class ResourceError(PermanentError):
    """A stored value that meshcrypt cannot use. The message names the key and the reason."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid resource at {key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BlockAffinity:
    """`/calico/ipam/v2/host/<node>/ipvN/block/<cidr>`: a node's claim on a block."""

    node: str
    cidr: CIDR
    state: str  # "confirmed", "pending", "pendingDeletion"
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class IPAMHandle:
    """`/calico/ipam/v2/handle/<id>`: how many addresses a handle holds in each block."""

    handle_id: str
    blocks: Mapping[CIDR, int]
    deleted: bool = False


DecodedResource: TypeAlias = (
    NodeResource
    | IPPoolResource
    | IPAMBlockResource
    | WorkloadEndpointResource
    | BlockAffinity
    | IPAMHandle
    | JSONObject  # a FelixConfiguration's raw spec
)


# ---- typed access to decoded JSON ----------------------------------------------------------------


class _Fields:
    """One JSON object of a value, with typed getters that raise ResourceError naming the field."""

    def __init__(self, key: str, obj: JSONObject, path: str = "") -> None:
        self.key = key
        self.obj = obj
        self.path = path

    def _where(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, reason: str) -> ResourceError:
        return ResourceError(self.key, f"{self._where(name)}: {reason}")

    def sub(self, name: str) -> _Fields:
        """A nested object; an absent or null one reads as empty."""
        value = self.obj.get(name)
        if value is None:
            return _Fields(self.key, {}, self._where(name))
        if not isinstance(value, dict):
            raise self.error(name, f"expected an object, got {type(value).__name__}")
        return _Fields(self.key, value, self._where(name))

    def str_or_none(self, name: str) -> str | None:
        """A string field; None when absent, null or empty."""
        value = self.obj.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {type(value).__name__}")
        return value

    def bool(self, name: str, default: bool = False) -> bool:
        value = self.obj.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {value!r}")
        return value

    def int_or_none(self, name: str) -> int | None:
        value = self.obj.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected an integer, got {value!r}")
        return value

    def list(self, name: str) -> list[object]:
        value = self.obj.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(name, f"expected a list, got {type(value).__name__}")
        return value


def _load(key: str, value: bytes) -> JSONObject:
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ResourceError(key, f"bad JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ResourceError(key, f"bad JSON: expected an object, got {type(obj).__name__}")
    return obj


def _load_resource(key: str, value: bytes, kind: ResourceKind, names: Mapping[str, str]) -> _Fields:
    """A v3 resource: checks `kind`, `apiVersion` and the metadata names that the key implies."""
    fields = _Fields(key, _load(key, value))
    found_kind = fields.obj.get("kind")
    if found_kind is not None and found_kind != kind.value:
        raise ResourceError(key, f"wrong kind {found_kind!r}, expected {kind.value!r}")
    api_version = fields.obj.get("apiVersion")
    if api_version is not None and api_version != API_VERSION:
        raise ResourceError(key, f"wrong apiVersion {api_version!r}, expected {API_VERSION!r}")
    metadata = fields.sub("metadata")
    for field, expected in names.items():
        found = metadata.str_or_none(field)
        if found is not None and found != expected:
            raise metadata.error(field, f"{found!r} does not match the key ({expected!r})")
    return fields


def _expect(key: str, kind: ResourceKind) -> str:
    parsed = layout.classify(key)
    if parsed is None or parsed.kind is not kind:
        raise ResourceError(key, f"not a {kind.value} key")
    return parsed.name


_T = TypeVar("_T")


def _of_family(fields: _Fields, name: str, value: object, cls: type[_T], family: IPFamily) -> _T:
    """`value` if it is a `cls` (the right family), else a ResourceError naming the field."""
    if isinstance(value, cls):
        return value
    raise fields.error(name, f"{value} is not an {family.label} address")


# ---- Node ----------------------------------------------------------------------------------------


def _ip_interface(text: str) -> IPInterface:
    fast = fast_ipv4(text)
    if fast is not None and fast[1] is not None:
        return IPv4Interface(fast)
    return ipaddress.ip_interface(text)


def _ip_address(text: str) -> IPAddress:
    fast = fast_ipv4(text)
    if fast is not None and fast[1] is None:
        return IPv4Address(fast[0])
    return ipaddress.ip_address(text)


def _bgp_address(bgp: _Fields, name: str) -> IPInterface | None:
    text = bgp.str_or_none(name)
    if text is None or "/" not in text:
        return None  # Felix reads only the CIDR form; a bare IP is ignored, as there
    try:
        return _ip_interface(text.strip())
    except ValueError as exc:
        raise bgp.error(name, f"bad address: {exc}") from exc


def _tunnel_address(wg: _Fields, name: str) -> IPAddress | None:
    text = wg.str_or_none(name)
    if text is None:
        return None
    try:
        return _ip_address(text.strip())
    except ValueError as exc:
        raise wg.error(name, f"bad address: {exc}") from exc


def _public_key(status: _Fields, name: str) -> Key | None:
    text = status.str_or_none(name)
    if text is None:
        return None
    try:
        key = Key.from_base64(text)
    except KeyFormatError as exc:
        raise status.error(name, f"bad WireGuard public key: {exc}") from exc
    return None if key.is_zero else key


def _host_addresses(spec: _Fields) -> tuple[IPAddress, ...]:
    out: list[IPAddress] = []
    for index, item in enumerate(spec.list("addresses")):
        where = f"addresses[{index}]"
        if not isinstance(item, dict):
            raise spec.error(where, "expected an object")
        entry = _Fields(spec.key, item, f"{spec.path}.{where}")
        text = entry.str_or_none("address")
        if text is None:
            continue
        try:
            out.append(parse_ip_or_cidr_address(text))
        except ValueError as exc:
            raise entry.error("address", f"bad address: {exc}") from exc
    return tuple(out)


def decode_node(key: str, value: bytes) -> NodeResource:
    name = _expect(key, ResourceKind.NODE)
    fields = _load_resource(key, value, ResourceKind.NODE, {"name": name})
    spec = fields.sub("spec")
    bgp = spec.sub("bgp")
    wg = spec.sub("wireguard")
    status = fields.sub("status")
    v4 = _bgp_address(bgp, "ipv4Address")
    v6 = _bgp_address(bgp, "ipv6Address")
    wg4 = _tunnel_address(wg, "interfaceIPv4Address")
    wg6 = _tunnel_address(wg, "interfaceIPv6Address")
    v4_family, v6_family = IPFamily.V4, IPFamily.V6
    return NodeResource(
        name=name,
        ipv4_address=None
        if v4 is None
        else _of_family(bgp, "ipv4Address", v4, IPv4Interface, v4_family),
        ipv6_address=None
        if v6 is None
        else _of_family(bgp, "ipv6Address", v6, IPv6Interface, v6_family),
        addresses=_host_addresses(spec),
        wireguard_ipv4=None
        if wg4 is None
        else _of_family(wg, "interfaceIPv4Address", wg4, IPv4Address, v4_family),
        wireguard_ipv6=None
        if wg6 is None
        else _of_family(wg, "interfaceIPv6Address", wg6, IPv6Address, v6_family),
        public_key=_public_key(status, "wireguardPublicKey"),
        public_key_v6=_public_key(status, "wireguardPublicKeyV6"),
    )


# ---- FelixConfiguration --------------------------------------------------------------------------


def decode_felix_configuration(key: str, value: bytes) -> JSONObject:
    """The raw `spec` of a FelixConfiguration (`config_parse.spec_overrides` parses the fields)."""
    name = _expect(key, ResourceKind.FELIX_CONFIGURATION)
    fields = _load_resource(key, value, ResourceKind.FELIX_CONFIGURATION, {"name": name})
    return dict(fields.sub("spec").obj)


# ---- IPPool --------------------------------------------------------------------------------------

_BLOCK_SIZES: Final = {IPFamily.V4: (20, 32, 26), IPFamily.V6: (116, 128, 122)}


def decode_ip_pool(key: str, value: bytes) -> IPPoolResource:
    name = _expect(key, ResourceKind.IP_POOL)
    fields = _load_resource(key, value, ResourceKind.IP_POOL, {"name": name})
    spec = fields.sub("spec")
    text = spec.str_or_none("cidr")
    if text is None:
        raise spec.error("cidr", "missing")
    try:
        # Go's ParseCIDR (which Calico uses) masks host bits; so do we.
        cidr = parse_cidr_loose(text)
    except ValueError as exc:
        raise spec.error("cidr", f"bad CIDR: {exc}") from exc
    family = IPFamily.of(cidr)
    low, high, default = _BLOCK_SIZES[family]
    block_size = spec.int_or_none("blockSize")
    if block_size is None:
        block_size = default
    if not low <= block_size <= high:
        raise spec.error("blockSize", f"{block_size} is outside {low}–{high} for {family.label}")
    if block_size < cidr.prefixlen:
        raise spec.error("blockSize", f"/{block_size} blocks do not fit in {cidr}")
    uses: list[str] = []
    for index, item in enumerate(spec.list("allowedUses")):
        if not isinstance(item, str):
            raise spec.error(f"allowedUses[{index}]", "expected a string")
        uses.append(item)
    selector = spec.str_or_none("nodeSelector")
    return IPPoolResource(
        name=name,
        cidr=cidr,
        block_size=block_size,
        disabled=spec.bool("disabled"),
        allowed_uses=tuple(uses) if uses else ("Workload", "Tunnel"),
        node_selector=selector if selector is not None else "all()",
    )


# ---- IPAM ----------------------------------------------------------------------------------------


def _cidr(fields: _Fields, name: str, text: str) -> CIDR:
    try:
        return parse_cidr(text)
    except ValueError as exc:
        raise fields.error(name, f"bad CIDR: {exc}") from exc


def decode_ipam_block(key: str, value: bytes) -> IPAMBlockResource:
    key_cidr = layout.parse_block_key(key)
    if key_cidr is None:
        raise ResourceError(key, "not an IPAM block key")
    fields = _Fields(key, _load(key, value))
    text = fields.str_or_none("cidr")
    if text is None:
        raise fields.error("cidr", "missing")
    # The usual value is the key's own CIDR as text (the key's segment with "/" for its first
    # "-", as `layout.block_name` writes it): no need to parse it again.
    same = text == key.rsplit("/", 1)[1].replace("-", "/", 1)
    cidr = key_cidr if same else _cidr(fields, "cidr", text)
    if cidr != key_cidr:
        raise fields.error("cidr", f"{cidr} does not match the key's block {key_cidr}")
    affinity = fields.str_or_none("affinity")
    node: str | None = None
    if affinity is not None and affinity.startswith("host:"):
        node = affinity[len("host:") :] or None
    return IPAMBlockResource(cidr=cidr, node=node, deleted=fields.bool("deleted"))


def decode_block_affinity(key: str, value: bytes) -> BlockAffinity:
    parts = layout.parse_affinity_key(key)
    if parts is None:
        raise ResourceError(key, "not a block affinity key")
    node, cidr = parts
    fields = _Fields(key, _load(key, value))
    state = fields.str_or_none("state")
    if state is None:
        raise fields.error("state", "missing")
    return BlockAffinity(node=node, cidr=cidr, state=state, deleted=fields.bool("deleted"))


def decode_ipam_handle(key: str, value: bytes) -> IPAMHandle:
    handle_id = _expect(key, ResourceKind.IPAM_HANDLE)
    fields = _Fields(key, _load(key, value))
    found = fields.str_or_none("handleID")
    if found is not None and found != handle_id:
        raise fields.error("handleID", f"{found!r} does not match the key ({handle_id!r})")
    block = fields.sub("block")
    blocks: dict[CIDR, int] = {}
    for text in block.obj:
        count = block.int_or_none(text)
        if count is None or count < 0:
            raise block.error(text, f"expected a count, got {block.obj[text]!r}")
        blocks[_cidr(block, text, text)] = count
    return IPAMHandle(handle_id=handle_id, blocks=blocks, deleted=fields.bool("deleted"))


# ---- WorkloadEndpoint ----------------------------------------------------------------------------


def decode_workload_endpoint(key: str, value: bytes) -> WorkloadEndpointResource:
    ident = _expect(key, ResourceKind.WORKLOAD_ENDPOINT)
    namespace, name = ident.split("/", 1)
    fields = _load_resource(
        key, value, ResourceKind.WORKLOAD_ENDPOINT, {"namespace": namespace, "name": name}
    )
    spec = fields.sub("spec")
    node = spec.str_or_none("node")
    if node is None:
        raise spec.error("node", "missing")
    networks: list[CIDR] = []
    for index, item in enumerate(spec.list("ipNetworks")):
        where = f"ipNetworks[{index}]"
        if not isinstance(item, str):
            raise spec.error(where, "expected a string")
        cidr = _cidr(spec, where, item)
        if not is_host_cidr(cidr):
            raise spec.error(where, f"{cidr} is not a /32 or /128")
        networks.append(cidr)
    return WorkloadEndpointResource(key=ident, node=node, ip_networks=tuple(networks))


# ---- any key -------------------------------------------------------------------------------------


def decode(key: str, value: bytes) -> tuple[ResourceKind, DecodedResource] | None:
    """Decode the value of any key meshcrypt uses; None for keys it does not use."""
    parsed = layout.classify(key)
    if parsed is None:
        return None
    kind = parsed.kind
    decoded: DecodedResource
    if kind is ResourceKind.NODE:
        decoded = decode_node(key, value)
    elif kind is ResourceKind.FELIX_CONFIGURATION:
        decoded = decode_felix_configuration(key, value)
    elif kind is ResourceKind.IP_POOL:
        decoded = decode_ip_pool(key, value)
    elif kind is ResourceKind.WORKLOAD_ENDPOINT:
        decoded = decode_workload_endpoint(key, value)
    elif kind is ResourceKind.IPAM_BLOCK:
        decoded = decode_ipam_block(key, value)
    elif kind is ResourceKind.BLOCK_AFFINITY:
        decoded = decode_block_affinity(key, value)
    else:
        decoded = decode_ipam_handle(key, value)
    return kind, decoded


# ---- read-modify-write ---------------------------------------------------------------------------


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


#: Pass as `value` to `patch_json` to remove the field.
DELETE: Final = _Delete()


def patch_json(raw: bytes, path: tuple[str, ...], value: object) -> bytes:
    """`raw` with the field at `path` set to `value` (or removed, with `DELETE`).

    Every other field is kept, in its order, with its value; missing intermediate objects are
    created when setting. The output is compact JSON, equivalent to the input except at `path`.
    Raises ValueError when `raw` is not a JSON object or an intermediate field is not an object.
    """
    if not path:
        raise ValueError("patch_json needs a non-empty path")
    doc = json.loads(raw) if raw else {}
    if not isinstance(doc, dict):
        raise ValueError("the stored value is not a JSON object")
    parent: dict[str, object] = doc
    for depth, name in enumerate(path[:-1]):
        child = parent.get(name)
        if child is None:
            if value is DELETE:
                return _dump(doc)  # nothing to delete
            child = parent[name] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{'.'.join(path[: depth + 1])} is not a JSON object")
        parent = child
    if value is DELETE:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return _dump(doc)


def _dump(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
