"""`meshcrypt doctor`: the troubleshooting checks of one node, as a report value.

`run_checks` is pure: the dataplane observations, the decoded cluster, the effective configuration
and the host's links in, a list of `Check` results out. What the node *should* hold comes from
`ops.expected` (the agent's calculation and manager, run on an in-memory kernel), so a check fails
exactly when the node differs from what the agent would program.

Checks, in order (each passes, fails with a one-line hint, or is skipped with the reason):

- `datastore`: etcd answers; `config`: every configuration value is valid; `resources`: every
  stored resource decodes; `duplicate-keys`: no two nodes publish the same public key;
- per enabled family: `device` (exists, is WireGuard, is up, is readable, has the configured
  listening port and fwmark), `public-key` (the device key is the one in this node's Node status),
  `peers` (one per remote node with an address and an unshared key, and no other),
  `allowed-ips`, `endpoints` (endpoint and persistent keepalive), `routes` (device routes for
  peers' CIDRs, throw routes for the rest, nothing else of ours in the table), `rule`,
  `address` (the device's tunnel address) and `mtu` (at most the smallest MTU of the oper-up
  interfaces matching MTUIfacePattern, minus 60 for IPv4 or 80 for IPv6; equal to WireguardMTU
  when that is set);
- per disabled family: `disabled` (no device and no rule are left behind).

JSON schema `meshcrypt/doctor/v1`:

    {"schema": "meshcrypt/doctor/v1", "node": str, "ok": bool,
     "counts": {"pass": int, "fail": int, "skip": int},
     "checks": [{"id": str, "family": "IPv4"|"IPv6"|null, "status": "pass"|"fail"|"skip",
                 "summary": str, "hint": str|null, "details": [str]}]}
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshcrypt.datastore import layout
from meshcrypt.model.dataplane import Link, Route, RouteKind
from meshcrypt.model.keys import Key
from meshcrypt.model.net import CIDR, IPFamily
from meshcrypt.ops.cluster import ClusterResources, cidr_order, duplicate_keys, key_owners, node_key
from meshcrypt.ops.config_view import EffectiveConfig
from meshcrypt.ops.expected import ExpectedFamily, ExpectedRoute, expected_family
from meshcrypt.ops.observe import MTU_OVERHEAD, FamilyObservation, host_mtu
from meshcrypt.ops.status import family_enabled, rule_text

SCHEMA = "meshcrypt/doctor/v1"

RESYNC_HINT = (
    "the agent repairs this at its next resync (every RouteRefreshInterval, 90 s by default); "
    "if it persists, read the agent's log"
)


class Outcome(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Check:
    id: str
    family: IPFamily | None
    outcome: Outcome
    summary: str
    hint: str = ""
    details: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return self.id if self.family is None else f"{self.family.label} {self.id}"

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "family": None if self.family is None else self.family.label,
            "status": self.outcome.value,
            "summary": self.summary,
            "hint": self.hint or None,
            "details": list(self.details),
        }


@dataclass(frozen=True, slots=True)
class DoctorReport:
    node: str
    endpoints: tuple[str, ...]
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.outcome is not Outcome.FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def count(self, outcome: Outcome) -> int:
        return sum(c.outcome is outcome for c in self.checks)

    def check(self, check_id: str, family: IPFamily | None = None) -> Check:
        """The check called `check_id` (of `family`); KeyError when there is none."""
        for c in self.checks:
            if c.id == check_id and c.family == family:
                return c
        raise KeyError(check_id if family is None else f"{family.label} {check_id}")

    def to_json(self) -> dict[str, object]:
        return {
            "schema": SCHEMA,
            "node": self.node,
            "ok": self.ok,
            "counts": {o.value: self.count(o) for o in Outcome},
            "checks": [c.to_json() for c in self.checks],
        }


@dataclass(frozen=True, slots=True)
class DoctorInputs:
    node: str
    config: EffectiveConfig
    observations: Sequence[FamilyObservation]
    cluster: ClusterResources | None
    endpoints: Sequence[str] = ()
    datastore_error: str | None = None
    links: Sequence[Link] | None = None  # every link of the node; None when they could not be read
    links_error: str | None = None
    socket_dir: str = "/var/run/wireguard"
    expected: dict[IPFamily, ExpectedFamily] = field(default_factory=dict)  # computed if missing


def _pass(cid: str, fam: IPFamily | None, summary: str, details: Sequence[str] = ()) -> Check:
    return Check(cid, fam, Outcome.PASS, summary, details=tuple(details))


def _fail(
    cid: str, fam: IPFamily | None, summary: str, hint: str, details: Sequence[str] = ()
) -> Check:
    return Check(cid, fam, Outcome.FAIL, summary, hint, tuple(details))


def _skip(cid: str, fam: IPFamily | None, summary: str) -> Check:
    return Check(cid, fam, Outcome.SKIP, summary)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# ---- cluster-wide checks -------------------------------------------------------------------------


def _check_datastore(inputs: DoctorInputs) -> Check:
    where = ", ".join(inputs.endpoints) or "etcd"
    if inputs.datastore_error is not None or inputs.cluster is None:
        return _fail(
            "datastore",
            None,
            f"cannot read {where}: {inputs.datastore_error}",
            "check --etcd-endpoints (or ETCD_ENDPOINTS) and that etcd runs; the checks that need "
            "the datastore are skipped",
        )
    count = len(inputs.cluster.nodes)
    return _pass("datastore", None, f"{where} answers; {_plural(count, 'node')} registered")


def _check_config(inputs: DoctorInputs) -> Check:
    if inputs.config.errors:
        return _fail(
            "config",
            None,
            f"{_plural(len(inputs.config.errors), 'invalid configuration value')} ignored",
            "fix them with `meshcrypt config set|unset PARAM` (or the FELIX_* variable); "
            "the agent uses the lower layer's value meanwhile",
            inputs.config.errors,
        )
    source = "built-in defaults and environment" if inputs.cluster is None else "all layers"
    return _pass("config", None, f"configuration is valid ({source})")


def _check_resources(cluster: ClusterResources) -> Check:
    if cluster.invalid:
        details = [f"{bad.key}: {bad.reason}" for bad in cluster.invalid]
        return _fail(
            "resources",
            None,
            f"{_plural(len(cluster.invalid), 'stored resource')} cannot be used and "
            "are skipped by the agent",
            "fix or delete each resource named below",
            details,
        )
    return _pass("resources", None, "every stored resource decodes")


def _check_duplicate_keys(cluster: ClusterResources) -> Check:
    details = [
        f"{family.label} key {key.to_base64()}: nodes {', '.join(names)}"
        for family in IPFamily
        for key, names in sorted(duplicate_keys(cluster.nodes, family).items(), key=_key_order)
    ]
    if details:
        return _fail(
            "duplicate-keys",
            None,
            f"{_plural(len(details), 'public key')} published by more than one node",
            "nodes sharing a key are never peers, so traffic to them is not encrypted: delete "
            "the WireGuard device on all but one of them (a cloned image?) so their agents "
            "generate new keys",
            details,
        )
    return _pass("duplicate-keys", None, "every published key belongs to one node")


def _key_order(item: tuple[Key, list[str]]) -> tuple[list[str], bytes]:
    return (item[1], item[0].raw)


# ---- per-family checks ---------------------------------------------------------------------------


def _link_problem(inputs: DoctorInputs, obs: FamilyObservation) -> Check | None:
    """A failed `device` check when the link is missing, not WireGuard, down or unreadable."""
    fam, iface, link = obs.family, obs.interface, obs.link
    if link is None:
        return _fail(
            "device",
            fam,
            f"no device {iface}",
            "the agent creates it: is `meshcrypt agent` running on this node? its log says "
            "why not (e.g. WireGuard not supported)",
            obs.errors,
        )
    if obs.backend not in ("kernel", "userspace"):
        return _fail(
            "device",
            fam,
            f"{iface} is a {link.kind or 'plain'} link, not a WireGuard device",
            "delete that interface or choose another WireguardInterfaceName",
        )
    if not link.admin_up:
        return _fail(
            "device",
            fam,
            f"{iface} is down",
            f"`ip link set {iface} up`; the agent also brings it up at its next apply",
        )
    if not link.oper_up:
        hint = (
            "for wireguard-go, check that its process still runs"
            if obs.backend == "userspace"
            else "the kernel reports no carrier; delete the device and the agent recreates it"
        )
        return _fail("device", fam, f"{iface} is up but not running", hint)
    if obs.device is None:
        if obs.backend == "userspace":
            hint = (
                f"wireguard-go's control socket is {inputs.socket_dir}/{iface}.sock: run inside "
                "the node's mount namespace (nsenter -t <pid> -m -n meshcrypt doctor) or pass "
                "--socket-dir"
            )
        else:
            hint = "reading the kernel device needs root (CAP_NET_ADMIN)"
        return _fail(
            "device", fam, f"cannot read the WireGuard configuration of {iface}", hint, obs.errors
        )
    return None


def _check_device(inputs: DoctorInputs, obs: FamilyObservation, config: EffectiveConfig) -> Check:
    problem = _link_problem(inputs, obs)
    if problem is not None:
        return problem
    assert obs.device is not None
    fam, iface = obs.family, obs.interface
    c = config.config.for_family(fam)
    wrong = []
    if obs.device.listen_port != c.listening_port:
        wrong.append(f"listening port {obs.device.listen_port}, expected {c.listening_port}")
    if obs.device.fwmark != c.firewall_mark:
        wrong.append(f"fwmark {obs.device.fwmark:#x}, expected {c.firewall_mark:#x}")
    if wrong:
        return _fail("device", fam, f"{iface}: " + "; ".join(wrong), RESYNC_HINT, wrong)
    return _pass(
        "device",
        fam,
        f"{iface} ({obs.backend}) is up, listening on {c.listening_port}, "
        f"fwmark {c.firewall_mark:#x}",
    )


def _check_public_key(inputs: DoctorInputs, obs: FamilyObservation) -> Check:
    fam, cluster = obs.family, inputs.cluster
    assert cluster is not None
    field_name = "wireguardPublicKey" if fam is IPFamily.V4 else "wireguardPublicKeyV6"
    node = cluster.nodes.get(inputs.node)
    if node is None:
        key = layout.node_key(inputs.node)
        bad = [f"{b.key}: {b.reason}" for b in cluster.invalid if b.key == key]
        summary = f"Node {inputs.node} is invalid" if bad else f"no Node {inputs.node} in etcd"
        return _fail(
            "public-key",
            fam,
            summary,
            "the agent registers its Node at start: is it running, and is --node (NODENAME) "
            "this node's name?",
            bad,
        )
    if obs.device is None:
        return _skip("public-key", fam, "the device could not be read")
    device_key = obs.device.public_key
    if device_key is None or device_key.is_zero:
        return _fail(
            "public-key", fam, f"{obs.interface} has no private key", "the agent generates one"
        )
    published = node_key(node, fam)
    if published is None:
        return _fail(
            "public-key",
            fam,
            f"Node {inputs.node} publishes no {fam.label} key (status.{field_name} is empty)",
            "the agent publishes the device's key once the device exists: read its log for "
            "publishing errors",
        )
    if published != device_key:
        return _fail(
            "public-key",
            fam,
            f"status.{field_name} of Node {inputs.node} is {published.to_base64()}, but the "
            f"device's key is {device_key.to_base64()}",
            "peers encrypt to the published key, so traffic to this node fails: the agent "
            "republishes its device's key when it sees the change; if this persists, restart it",
        )
    return _pass("public-key", fam, f"the device's key {device_key.to_base64()} is published")


def _names(owners: dict[Key, list[str]], key: Key) -> str:
    names = owners.get(key, [])
    if not names:
        return "no node publishes this key"
    if len(names) > 1:
        return f"key shared by {', '.join(names)}"
    return f"node {names[0]}"


def _check_peers(
    obs: FamilyObservation, exp: ExpectedFamily, owners: dict[Key, list[str]]
) -> Check:
    fam = obs.family
    assert obs.device is not None
    actual = {p.public_key for p in obs.device.peers}
    details = [
        f"missing peer for node {exp.peers[k].node} (key {k.to_base64()})"
        for k in sorted(set(exp.peers) - actual, key=lambda k: exp.peers[k].node)
    ]
    details += [
        f"unexpected peer {k.to_base64()} ({_names(owners, k)})"
        for k in sorted(actual - set(exp.peers), key=lambda k: k.raw)
    ]
    not_peers = [f"{name}: {why}" for name, why in exp.not_peers.items()]
    if details:
        return _fail(
            "peers",
            fam,
            f"{len(details)} peer(s) wrong out of {len(exp.peers)} expected",
            RESYNC_HINT,
            details + [f"not a peer (expected): {n}" for n in not_peers],
        )
    summary = f"{_plural(len(exp.peers), 'peer')}, one per remote node with a key"
    if not_peers:
        summary += f"; {_plural(len(not_peers), 'node')} reached unencrypted"
    return _pass("peers", fam, summary, [f"not a peer: {n}" for n in not_peers])


def _cidrs(cidrs: set[CIDR]) -> str:
    return ", ".join(str(c) for c in sorted(cidrs, key=cidr_order))


def _check_allowed_ips(obs: FamilyObservation, exp: ExpectedFamily, host_enc: bool) -> Check:
    assert obs.device is not None
    details = []
    checked = 0
    for peer in obs.device.peers:
        want = exp.peers.get(peer.public_key)
        if want is None:
            continue
        checked += 1
        have = set(peer.allowed_ips)
        missing, extra = set(want.allowed_ips) - have, have - set(want.allowed_ips)
        if missing:
            details.append(f"node {want.node}: missing {_cidrs(missing)}")
        if extra:
            details.append(f"node {want.node}: unexpected {_cidrs(extra)}")
    if details:
        return _fail(
            "allowed-ips", obs.family, f"{_plural(len(details), 'problem')}", RESYNC_HINT, details
        )
    what = "blocks, workload and tunnel addresses" + (" and host addresses" if host_enc else "")
    return _pass(
        "allowed-ips",
        obs.family,
        f"allowed IPs of {_plural(checked, 'peer')}: exactly their nodes' {what}",
    )


def _check_endpoints(obs: FamilyObservation, exp: ExpectedFamily) -> Check:
    assert obs.device is not None
    details = []
    checked = 0
    for peer in obs.device.peers:
        want = exp.peers.get(peer.public_key)
        if want is None:
            continue
        checked += 1
        if peer.endpoint != want.endpoint:
            details.append(f"node {want.node}: endpoint {peer.endpoint}, expected {want.endpoint}")
        if peer.persistent_keepalive != want.persistent_keepalive:
            details.append(
                f"node {want.node}: persistent keepalive {peer.persistent_keepalive}s, "
                f"expected {want.persistent_keepalive}s"
            )
    if details:
        return _fail(
            "endpoints", obs.family, f"{_plural(len(details), 'problem')}", RESYNC_HINT, details
        )
    return _pass(
        "endpoints",
        obs.family,
        f"endpoint and keepalive of {_plural(checked, 'peer')} as expected",
    )


def _describe_route(obs: FamilyObservation, dst: CIDR, kind: RouteKind) -> str:
    if kind is RouteKind.THROW:
        return f"throw {dst}"
    return f"{dst} dev {obs.interface}"


def _owner_text(route: ExpectedRoute, node: str) -> str:
    if route.node is None:
        return ""
    return " (this node)" if route.node == node else f" (node {route.node})"


def _check_routes(
    inputs: DoctorInputs, obs: FamilyObservation, exp: ExpectedFamily, table: int
) -> Check:
    fam = obs.family
    by_dst: dict[CIDR, Route] = {r.dst: r for r in obs.routes}
    details = []
    for dst in sorted(exp.routes, key=cidr_order):
        want = exp.routes[dst]
        have = by_dst.get(dst)
        owner = _owner_text(want, inputs.node)
        if have is None:
            details.append(f"missing: {_describe_route(obs, dst, want.kind)}{owner}")
        elif have.kind is not want.kind:
            details.append(
                f"{dst} is a {have.kind.value} route, expected {_describe_route(obs, dst, want.kind)}"
                f"{owner}"
            )
        elif want.kind is RouteKind.DEVICE and not obs.owns(have):
            details.append(
                f"{dst} goes through ifindex {have.ifindex}, expected dev {obs.interface}{owner}"
            )
    for route in sorted(obs.routes, key=lambda r: cidr_order(r.dst)):
        if route.dst not in exp.routes and obs.owns(route):
            details.append(f"unexpected: {_describe_route(obs, route.dst, route.kind)}")
    if details:
        return _fail(
            "routes",
            fam,
            f"{_plural(len(details), 'route')} wrong in table {table}",
            f"{RESYNC_HINT}; `ip {'-6 ' if fam is IPFamily.V6 else ''}route show table {table}` "
            "shows the table",
            details,
        )
    devices = sum(r.kind is RouteKind.DEVICE for r in exp.routes.values())
    throws = len(exp.routes) - devices
    return _pass(
        "routes",
        fam,
        f"table {table} holds the {_plural(devices, 'device route')} and "
        f"{_plural(throws, 'throw route')} expected",
    )


def _check_rule(obs: FamilyObservation, exp: ExpectedFamily) -> Check:
    fam = obs.family
    want = exp.rule
    if want is None:
        return _skip("rule", fam, "the expected rule could not be computed")
    wanted = rule_text(want)
    matching = [r for r in obs.rules if r == want]
    others = [r for r in obs.rules if r != want]
    details = [f"unexpected rule: {rule_text(r)}" for r in others]
    if not matching:
        details.insert(0, f"missing rule: {wanted}")
    if details:
        return _fail(
            "rule",
            fam,
            f"the rule `{wanted}` is " + ("missing" if not matching else "not alone"),
            f"{RESYNC_HINT}; `ip {'-6 ' if fam is IPFamily.V6 else ''}rule show` lists the rules",
            details,
        )
    return _pass("rule", fam, f"`{wanted}`")


def _check_address(obs: FamilyObservation, exp: ExpectedFamily) -> Check:
    have = {
        a.address for a in obs.addresses if not (a.address.version == 6 and a.address.is_link_local)
    }
    want = set(exp.addresses)
    if have == want:
        text = ", ".join(str(a) for a in sorted(want)) if want else "none (no tunnel address)"
        return _pass("address", obs.family, f"device address: {text}")
    details = [f"missing {a}" for a in sorted(want - have)]
    details += [f"unexpected {a}" for a in sorted(have - want)]
    return _fail(
        "address",
        obs.family,
        "the device address differs from the Node's tunnel address",
        f"the agent sets spec.wireguard's address on the device; {RESYNC_HINT}",
        details,
    )


def _check_mtu(inputs: DoctorInputs, obs: FamilyObservation) -> Check:
    fam, link = obs.family, obs.link
    if link is None:
        return _skip("mtu", fam, "no device")
    if inputs.links is None:
        return _skip("mtu", fam, f"the interfaces could not be listed: {inputs.links_error}")
    config = inputs.config.config
    pattern = config.mtu_iface_pattern
    exclude = (config.wireguard_interface_name, config.wireguard_interface_name_v6)
    host = host_mtu(inputs.links, pattern, exclude)
    configured = config.wireguard_mtu if fam is IPFamily.V4 else config.wireguard_mtu_v6
    param = "WireguardMTU" if fam is IPFamily.V4 else "WireguardMTUV6"
    if configured and link.mtu != configured:
        return _fail(
            "mtu",
            fam,
            f"{obs.interface} MTU {link.mtu} differs from {param} {configured}",
            RESYNC_HINT,
        )
    if host.mtu is None:
        return _skip("mtu", fam, f"no running interface matches MTUIfacePattern {pattern!r}")
    overhead = MTU_OVERHEAD[fam]
    limit = host.mtu - overhead
    basis = f"{', '.join(host.links)} MTU {host.mtu} − {overhead}"
    if link.mtu > limit:
        return _fail(
            "mtu",
            fam,
            f"{obs.interface} MTU {link.mtu} is larger than {limit} ({basis})",
            f"encapsulated packets would exceed the underlay MTU: set {param} to 0 (auto) or at "
            f"most {limit} (`meshcrypt config set {param} {limit}`)",
        )
    return _pass("mtu", fam, f"{obs.interface} MTU {link.mtu} ≤ {limit} ({basis})")


def _check_disabled(obs: FamilyObservation) -> Check:
    fam = obs.family
    left = []
    if obs.link is not None:
        left.append(f"device {obs.interface} exists")
    left += [f"rule {rule_text(r)}" for r in obs.rules]
    if left:
        return _fail(
            "disabled",
            fam,
            f"WireGuard is disabled for {fam.label}, but its state is left behind",
            "the agent removes the device, routes and rule of a disabled family when it runs: "
            "is it running?",
            left,
        )
    return _pass("disabled", fam, f"WireGuard is disabled for {fam.label}; nothing left behind")


def _family_checks(inputs: DoctorInputs, obs: FamilyObservation) -> list[Check]:
    fam, config = obs.family, inputs.config
    cluster = inputs.cluster
    if cluster is None:
        if obs.link is None:
            return [_skip("device", fam, "the configuration is unknown and no device exists")]
        device = _link_problem(inputs, obs) or _pass(
            "device",
            fam,
            f"{obs.interface} ({obs.backend}) is up; its port and fwmark are not checked "
            "(the configuration is unknown)",
        )
        return [device] + [
            _skip(cid, fam, "needs the datastore")
            for cid in ("public-key", "peers", "allowed-ips", "endpoints", "routes", "rule")
        ]
    if not family_enabled(config, fam):
        return [_check_disabled(obs)]
    checks = [_check_device(inputs, obs, config), _check_public_key(inputs, obs)]
    exp = inputs.expected.get(fam)
    if exp is None:
        exp = expected_family(inputs.node, config.config, cluster, fam)
    owners = key_owners(cluster.nodes, fam)
    if obs.device is None:
        checks += [
            _skip(cid, fam, "the device could not be read")
            for cid in ("peers", "allowed-ips", "endpoints")
        ]
    else:
        checks += [
            _check_peers(obs, exp, owners),
            _check_allowed_ips(obs, exp, config.config.wireguard_host_encryption_enabled),
            _check_endpoints(obs, exp),
        ]
    table = config.config.routing_table_index
    if config.config.route_sync_disabled:
        checks.append(_skip("routes", fam, "RouteSyncDisabled is set: the agent keeps no routes"))
    else:
        checks.append(_check_routes(inputs, obs, exp, table))
    checks.append(_check_rule(obs, exp))
    if obs.link is None:
        checks.append(_skip("address", fam, "no device"))
    else:
        checks.append(_check_address(obs, exp))
    checks.append(_check_mtu(inputs, obs))
    return checks


def run_checks(inputs: DoctorInputs) -> DoctorReport:
    """Every check for the node (see the module docstring)."""
    checks = [_check_datastore(inputs), _check_config(inputs)]
    if inputs.cluster is not None:
        checks += [_check_resources(inputs.cluster), _check_duplicate_keys(inputs.cluster)]
    for obs in inputs.observations:
        checks += _family_checks(inputs, obs)
    return DoctorReport(inputs.node, tuple(inputs.endpoints), tuple(checks))


# ---- rendering -----------------------------------------------------------------------------------


def render_doctor(report: DoctorReport) -> str:
    width = max((len(c.title) for c in report.checks), default=0)
    lines = [f"node {report.node}  (etcd {', '.join(report.endpoints)})", ""]
    for c in report.checks:
        lines.append(f"{c.outcome.value.upper():4}  {c.title.ljust(width)}  {c.summary}")
        if c.outcome is Outcome.FAIL:
            pad = " " * (6 + width + 2)
            lines += [f"{pad}- {d}" for d in c.details]
            lines.append(f"{pad}hint: {c.hint}")
    lines += [
        "",
        f"{report.count(Outcome.FAIL)} failed, {report.count(Outcome.PASS)} passed, "
        f"{report.count(Outcome.SKIP)} skipped",
    ]
    return "\n".join(lines) + "\n"
