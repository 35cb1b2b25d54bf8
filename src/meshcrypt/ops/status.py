"""`meshcrypt status`: one node's WireGuard devices, peers, routes and rule, as a report value.

`build_status` is pure: the dataplane observations, the decoded cluster (None when etcd could not be
read) and the effective configuration in, a `StatusReport` out. `StatusReport.to_json()` is the
stable `--json` schema and `render_status` the human listing; both show the same facts.

A family is reported when its WireGuard is enabled, or when its device exists anyway (a leftover,
or the configuration is unknown because etcd is unreachable). Peers are named by matching their
public key with the nodes' published keys (`status.wireguardPublicKey` / `…V6`); a key no node
publishes shows as an unknown node, a key several nodes publish lists them all.

JSON schema `meshcrypt/status/v1` (every key always present; `null` where unknown):

    {"schema": "meshcrypt/status/v1", "node": str,
     "datastore": {"endpoints": [str], "reachable": bool, "error": str|null},
     "warnings": [str],
     "families": [{
        "family": "IPv4"|"IPv6", "ip_version": 4|6, "enabled": bool|null,
        "device": {"name": str, "present": bool, "backend": "kernel"|"userspace"|null,
                   "link_kind": str|null, "admin_up": bool, "oper_up": bool, "mtu": int|null,
                   "listen_port": int|null, "fwmark": int|null, "public_key": str|null,
                   "addresses": [str]},
        "peers": [{"node": str|null, "nodes": [str], "public_key": str, "endpoint": str|null,
                   "allowed_ips": [str], "latest_handshake": float|null,
                   "latest_handshake_age_seconds": float|null, "rx_bytes": int, "tx_bytes": int,
                   "persistent_keepalive_seconds": int}],
        "routing_table": int,
        "routes": [{"dst": str, "type": "device"|"throw", "device": str|null,
                    "ifindex": int|null, "metric": int, "protocol": int}],
        "rules": [{"priority": int, "invert": bool, "mark": int, "mask": int, "table": int,
                   "text": str}],
        "errors": [str]}]}

The private key is never part of a report: `observe.DeviceView` does not carry it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshcrypt.model.dataplane import Route, RouteKind, Rule
from meshcrypt.model.net import IPFamily
from meshcrypt.ops import text
from meshcrypt.ops.cluster import ClusterResources, cidr_order, key_owners
from meshcrypt.ops.config_view import EffectiveConfig
from meshcrypt.ops.observe import FamilyObservation

SCHEMA = "meshcrypt/status/v1"

JSON = dict[str, object]


@dataclass(frozen=True, slots=True)
class PeerStatus:
    node: str | None  # the one node publishing this key; None when none or several do
    nodes: tuple[str, ...]  # every node publishing it
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: float | None  # unix seconds; None = never
    handshake_age: float | None
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int

    def to_json(self) -> JSON:
        return {
            "node": self.node,
            "nodes": list(self.nodes),
            "public_key": self.public_key,
            "endpoint": self.endpoint,
            "allowed_ips": list(self.allowed_ips),
            "latest_handshake": self.latest_handshake,
            "latest_handshake_age_seconds": self.handshake_age,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "persistent_keepalive_seconds": self.persistent_keepalive,
        }


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    name: str
    present: bool
    backend: str | None
    link_kind: str | None
    admin_up: bool
    oper_up: bool
    mtu: int | None
    listen_port: int | None
    fwmark: int | None
    public_key: str | None
    addresses: tuple[str, ...]

    def to_json(self) -> JSON:
        return {
            "name": self.name,
            "present": self.present,
            "backend": self.backend,
            "link_kind": self.link_kind,
            "admin_up": self.admin_up,
            "oper_up": self.oper_up,
            "mtu": self.mtu,
            "listen_port": self.listen_port,
            "fwmark": self.fwmark,
            "public_key": self.public_key,
            "addresses": list(self.addresses),
        }


@dataclass(frozen=True, slots=True)
class RouteStatus:
    dst: str
    type: str  # "device" or "throw"
    device: str | None
    ifindex: int | None
    metric: int
    protocol: int

    def to_json(self) -> JSON:
        return {
            "dst": self.dst,
            "type": self.type,
            "device": self.device,
            "ifindex": self.ifindex,
            "metric": self.metric,
            "protocol": self.protocol,
        }


def rule_text(rule: Rule) -> str:
    """The rule as `ip rule` prints it: `99: not from all fwmark 0x100000/0x100000 lookup 1`."""
    neg = "not " if rule.invert else ""
    return (
        f"{rule.priority}: {neg}from all fwmark {rule.mark:#x}/{rule.mask:#x} lookup {rule.table}"
    )


def rule_json(rule: Rule) -> JSON:
    return {
        "priority": rule.priority,
        "invert": rule.invert,
        "mark": rule.mark,
        "mask": rule.mask,
        "table": rule.table,
        "text": rule_text(rule),
    }


@dataclass(frozen=True, slots=True)
class FamilyStatus:
    family: IPFamily
    enabled: bool | None  # None: the configuration is unknown (etcd unreachable)
    device: DeviceStatus
    peers: tuple[PeerStatus, ...]
    table: int
    routes: tuple[RouteStatus, ...]
    rules: tuple[Rule, ...]
    errors: tuple[str, ...]

    def to_json(self) -> JSON:
        return {
            "family": self.family.label,
            "ip_version": int(self.family),
            "enabled": self.enabled,
            "device": self.device.to_json(),
            "peers": [p.to_json() for p in self.peers],
            "routing_table": self.table,
            "routes": [r.to_json() for r in self.routes],
            "rules": [rule_json(r) for r in self.rules],
            "errors": list(self.errors),
        }


@dataclass(frozen=True, slots=True)
class StatusReport:
    node: str
    endpoints: tuple[str, ...]
    datastore_error: str | None
    warnings: tuple[str, ...]
    families: tuple[FamilyStatus, ...]

    def to_json(self) -> JSON:
        return {
            "schema": SCHEMA,
            "node": self.node,
            "datastore": {
                "endpoints": list(self.endpoints),
                "reachable": self.datastore_error is None,
                "error": self.datastore_error,
            },
            "warnings": list(self.warnings),
            "families": [f.to_json() for f in self.families],
        }


# ---- building ------------------------------------------------------------------------------------


def family_enabled(config: EffectiveConfig, family: IPFamily) -> bool:
    c = config.config
    return c.wireguard_enabled if family is IPFamily.V4 else c.wireguard_enabled_v6


def _device_status(obs: FamilyObservation) -> DeviceStatus:
    link, dev = obs.link, obs.device
    return DeviceStatus(
        name=obs.interface,
        present=link is not None,
        backend=obs.backend,
        link_kind=None if link is None else link.kind,
        admin_up=link is not None and link.admin_up,
        oper_up=link is not None and link.oper_up,
        mtu=None if link is None else link.mtu,
        listen_port=None if dev is None else dev.listen_port,
        fwmark=None if dev is None else dev.fwmark,
        public_key=None if dev is None or dev.public_key is None else dev.public_key.to_base64(),
        addresses=tuple(f"{a.address}/{a.prefixlen}" for a in obs.addresses),
    )


def _route_status(obs: FamilyObservation, route: Route) -> RouteStatus:
    device: str | None = None
    if route.kind is RouteKind.DEVICE:
        if obs.link is not None and route.ifindex == obs.link.index:
            device = obs.interface
        elif route.ifindex is not None:
            device = f"ifindex {route.ifindex}"
    return RouteStatus(
        dst=str(route.dst),
        type=route.kind.value,
        device=device,
        ifindex=route.ifindex,
        metric=route.metric,
        protocol=route.protocol,
    )


def _peers(
    obs: FamilyObservation, owners: Mapping[bytes, list[str]], now: float
) -> tuple[PeerStatus, ...]:
    if obs.device is None:
        return ()
    out: list[PeerStatus] = []
    for peer in obs.device.peers:
        nodes = tuple(owners.get(peer.public_key.raw, ()))
        shake = peer.last_handshake or None
        out.append(
            PeerStatus(
                node=nodes[0] if len(nodes) == 1 else None,
                nodes=nodes,
                public_key=peer.public_key.to_base64(),
                endpoint=None if peer.endpoint is None else str(peer.endpoint),
                allowed_ips=tuple(str(c) for c in peer.allowed_ips),
                latest_handshake=shake,
                handshake_age=None if shake is None else max(now - shake, 0.0),
                rx_bytes=peer.rx_bytes,
                tx_bytes=peer.tx_bytes,
                persistent_keepalive=peer.persistent_keepalive,
            )
        )
    # Named peers first, by node name; unknown ones after, by key.
    out.sort(key=lambda p: (p.node is None, p.node or "", ",".join(p.nodes), p.public_key))
    return tuple(out)


def build_status(
    node: str,
    *,
    config: EffectiveConfig,
    observations: Sequence[FamilyObservation],
    cluster: ClusterResources | None,
    endpoints: Sequence[str],
    datastore_error: str | None,
    now: float,
) -> StatusReport:
    """The status report of `node` (see the module docstring)."""
    warnings: list[str] = []
    if datastore_error is not None:
        warnings += [
            f"etcd is unreachable: {datastore_error}",
            "peers are shown without node names, and the configuration is unknown (only "
            "built-in defaults and FELIX_* variables apply)",
        ]
    else:
        warnings.extend(f"configuration: {e}" for e in config.errors)
    families: list[FamilyStatus] = []
    for obs in observations:
        enabled = None if cluster is None else family_enabled(config, obs.family)
        if not enabled and obs.link is None:
            continue
        owners: dict[bytes, list[str]] = {}
        if cluster is not None:
            owners = {k.raw: v for k, v in key_owners(cluster.nodes, obs.family).items()}
        routes = sorted(obs.routes, key=lambda r: cidr_order(r.dst))
        families.append(
            FamilyStatus(
                family=obs.family,
                enabled=enabled,
                device=_device_status(obs),
                peers=_peers(obs, owners, now),
                table=obs.table,
                routes=tuple(_route_status(obs, r) for r in routes),
                rules=tuple(sorted(obs.rules, key=lambda r: r.priority)),
                errors=obs.errors,
            )
        )
    return StatusReport(node, tuple(endpoints), datastore_error, tuple(warnings), tuple(families))


# ---- rendering -----------------------------------------------------------------------------------


def _state(device: DeviceStatus) -> str:
    if not device.present:
        return "absent"
    if device.oper_up:
        return "up"
    return "admin up, not running" if device.admin_up else "down"


def _peer_lines(peer: PeerStatus) -> list[str]:
    if peer.node is not None:
        title = f"peer {peer.node}"
    elif peer.nodes:
        title = f"peer (key shared by {', '.join(peer.nodes)})"
    else:
        title = "peer (no node publishes this key)"
    age = peer.handshake_age
    shake = "never" if age is None else f"{text.duration(age)} ago"
    keepalive = "off" if not peer.persistent_keepalive else f"every {peer.persistent_keepalive}s"
    pairs = [
        ("public key", peer.public_key),
        ("endpoint", peer.endpoint or "(none)"),
        ("allowed ips", ", ".join(peer.allowed_ips) or "(none)"),
        ("latest handshake", shake),
        (
            "transfer",
            f"{text.byte_size(peer.rx_bytes)} received, {text.byte_size(peer.tx_bytes)} sent",
        ),
        ("persistent keepalive", keepalive),
    ]
    return [f"  {title}", *text.fields(pairs, indent="    ")]


def _family_lines(fam: FamilyStatus) -> list[str]:
    dev = fam.device
    backend = f" ({dev.backend})" if dev.backend else ""
    enabled = {True: "", False: " [WireGuard disabled for this family]", None: ""}[fam.enabled]
    lines = [f"{fam.family.label}: {dev.name}{backend}, {_state(dev)}{enabled}"]
    if dev.present:
        pairs = [
            ("public key", dev.public_key or "(unknown)"),
            ("listening port", "(unknown)" if dev.listen_port is None else str(dev.listen_port)),
            ("fwmark", "(unknown)" if dev.fwmark is None else f"{dev.fwmark:#x}"),
            ("MTU", str(dev.mtu)),
            ("addresses", ", ".join(dev.addresses) or "(none)"),
            ("peers", str(len(fam.peers))),
        ]
        lines += text.fields(pairs, indent="  ")
    lines += [f"  error: {e}" for e in fam.errors]
    for peer in fam.peers:
        lines += ["", *_peer_lines(peer)]
    lines += ["", f"  routes in table {fam.table}: {len(fam.routes)}"]
    if fam.routes:
        rows = [
            [r.dst, r.type, r.device or "-", str(r.protocol), str(r.metric)] for r in fam.routes
        ]
        lines += text.table(["DESTINATION", "TYPE", "DEVICE", "PROTO", "METRIC"], rows, "    ")
    lines += [f"  rules looking up table {fam.table}: {len(fam.rules)}"]
    lines += [f"    {rule_text(r)}" for r in fam.rules]
    return lines


def render_status(report: StatusReport) -> str:
    reach = "unreachable" if report.datastore_error is not None else "reachable"
    lines = [f"node {report.node}  (etcd {', '.join(report.endpoints)}: {reach})"]
    lines += [f"warning: {w}" for w in report.warnings]
    if not report.families:
        lines += ["", "WireGuard is disabled for IPv4 and IPv6, and no WireGuard device exists."]
    for fam in report.families:
        lines += ["", *_family_lines(fam)]
    return "\n".join(lines) + "\n"
