"""Start-up bootstrap with host encryption: the decision (`reference-behavior.md` §4, adapted to etcd).

Pure: kernel and datastore facts in, a `BootstrapDecision` out. `meshcrypt.agent.bootstrap` gathers
the facts, carries the decision out and explains the deadlock this prevents (issue #5125).

Felix runs this as a filter over the Typha endpoints, before it connects. meshcrypt has no Typha: the
agent talks to etcd directly, so the same filter runs over `ETCD_ENDPOINTS`. An endpoint is mapped to
a node through the nodes' addresses (`spec.bgp.ipv4Address` / `ipv6Address`, every
`spec.addresses[]` entry and the WireGuard tunnel addresses); the family of an endpoint is the family
of its IP.

Per IP family, in Felix's order (§4.2 a–h):

=====  ===================================================  ==========================================
step   when                                                 decision
=====  ===================================================  ==========================================
a      the family is disabled, or has no interface name     REMOVE (also without host encryption)
b      host encryption is off (and not forced)              KEEP, endpoints untouched
c/d    no device, no key on it, or no peers on it           REMOVE: nothing is encrypted to anyone yet
e      our published key is unknown (etcd unreachable)     KEEP, endpoints untouched; the watchdog
                                                            (`agent.bootstrap`) is the last resort
f      published key ≠ the device's key                     REMOVE: peers encrypt to a key we lost
g      filter this family's endpoints (below); all dropped  REMOVE, every endpoint kept
g      otherwise                                            KEEP, without the dropped endpoints
=====  ===================================================  ==========================================

"REMOVE" means: delete the device and clear the published key. The agent then starts without
WireGuard in that family; the manager creates a fresh device (new key) and publishes it once the
datastore is reachable, and the other nodes switch to it.

Endpoint filter (step g), for each endpoint of the family:

* the host is not an IP (a DNS name), or no known node has that address, or several do → **keep**
  (unlike Felix, a DNS name is no error: calico#10624; it counts for no family);
* the host is on this node (or loopback) → **keep**: local traffic never goes through WireGuard;
* the node has no published key of the family → **keep**: we route to it directly, it to us too;
* the node's key is one of our device's peers → **keep**: both directions are encrypted;
* otherwise → **drop**: the node has a key we do not know (it rebooted, or we missed an update), so
  it encrypts its replies to us while we route to it directly, or with its old key: asymmetric.

The endpoints of a family that ends in REMOVE are all kept (without WireGuard everything is direct).
The result keeps the configured order (Felix regroups v4 before v6).
"""

from __future__ import annotations

import enum
import ipaddress
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshcrypt.model.keys import Key
from meshcrypt.model.net import IPAddress, IPFamily
from meshcrypt.model.resources import NodeResource

FAMILIES = (IPFamily.V4, IPFamily.V6)


@dataclass(frozen=True, slots=True)
class KernelWireguardState:
    """What the kernel holds for one family's WireGuard device."""

    exists: bool = False
    public_key: Key | None = None  # None (or the zero key): the device has no key
    peer_keys: frozenset[Key] = frozenset()

    @property
    def has_key(self) -> bool:
        return self.exists and self.public_key is not None and not self.public_key.is_zero


ABSENT = KernelWireguardState()


@dataclass(frozen=True, slots=True)
class FamilyFacts:
    """One family's configuration and kernel state."""

    family: IPFamily
    enabled: bool
    interface_name: str
    kernel: KernelWireguardState = ABSENT


@dataclass(frozen=True, slots=True)
class BootstrapFacts:
    """Everything the decision needs.

    `nodes` is every Node the datastore holds (ours included), or None when the datastore could not
    be read: then our published key is unknown too. A missing own Node means "no published key".
    """

    node_name: str
    host_encryption: bool
    families: tuple[FamilyFacts, ...]
    endpoints: tuple[str, ...]
    nodes: Mapping[str, NodeResource] | None
    #: Felix's FELIX_DBG_WGBOOTSTRAP: run steps c–g without host encryption (tests).
    force: bool = False


class Action(enum.Enum):
    KEEP = "keep"
    REMOVE = "remove"


class Reason(enum.Enum):
    """Why a family was kept or removed; the value is the log line (Felix's wording where it has one)."""

    DISABLED = "WireGuard is not enabled - ensure no WireGuard config"
    HOST_ENCRYPTION_OFF = "host encryption is off - nothing to bootstrap"
    NO_KERNEL_STATE = (
        "No valid WireGuard kernel routing - removing WireGuard configuration completely"
    )
    PUBLISHED_KEY_UNKNOWN = (
        "datastore unreachable, published key unknown - keeping WireGuard, endpoints unfiltered"
    )
    KEY_MISMATCH = (
        "Found mismatch between kernel and datastore WireGuard keys - "
        "removing WireGuard configuration"
    )
    KEY_MATCHES = "WireGuard public key matches kernel"
    NO_USABLE_ENDPOINT = (
        "None of the etcd endpoints will be accessible due to WireGuard routing asymmetry - "
        "remove WireGuard"
    )


class EndpointVerdict(enum.Enum):
    """Why an endpoint was kept or dropped by one family's filter."""

    NOT_AN_IP = "host is not an IP address"
    UNKNOWN_HOST = "no node has this address"
    AMBIGUOUS = "several nodes have this address"
    LOCAL = "endpoint is local"
    NODES_UNKNOWN = "nodes unknown (datastore unreachable)"
    NO_KEY = "node has no WireGuard key: routing is direct"
    KEY_IN_KERNEL = "node's key is a peer of our device"
    KEY_NOT_IN_KERNEL = "node has a WireGuard key that is not in our device - exclude endpoint"

    @property
    def keeps(self) -> bool:
        return self is not EndpointVerdict.KEY_NOT_IN_KERNEL


@dataclass(frozen=True, slots=True)
class EndpointNote:
    endpoint: str
    verdict: EndpointVerdict
    node: str | None = None


@dataclass(frozen=True, slots=True)
class FamilyDecision:
    family: IPFamily
    action: Action
    reason: Reason
    interface_name: str
    #: The endpoints this family's filter examined (empty unless it reached step g).
    notes: tuple[EndpointNote, ...] = ()

    @property
    def delete_device(self) -> bool:
        """REMOVE deletes the device unless there is no interface name to delete."""
        return self.action is Action.REMOVE and bool(self.interface_name)

    @property
    def dropped(self) -> tuple[str, ...]:
        if self.action is not Action.KEEP:
            return ()
        return tuple(n.endpoint for n in self.notes if not n.verdict.keeps)


@dataclass(frozen=True, slots=True)
class BootstrapDecision:
    families: tuple[FamilyDecision, ...]
    #: The endpoints to connect to, in the configured order.
    endpoints: tuple[str, ...]
    #: The datastore could not be read (some family may rely on the watchdog).
    datastore_unknown: bool = False
    configured_endpoints: tuple[str, ...] = field(default=())

    @property
    def removals(self) -> tuple[FamilyDecision, ...]:
        return tuple(d for d in self.families if d.action is Action.REMOVE)

    @property
    def dropped(self) -> tuple[str, ...]:
        return tuple(e for e in self.configured_endpoints if e not in self.endpoints)

    def family(self, family: IPFamily) -> FamilyDecision:
        return next(d for d in self.families if d.family is family)


# ---- endpoints -----------------------------------------------------------------------------------


def endpoint_ip(endpoint: str) -> IPAddress | None:
    """The IP of an `http://host:port` endpoint (also bare `host:port`); None for a DNS name or
    anything unparsable."""
    text = endpoint.strip()
    if "://" not in text:
        text = "//" + text
    try:
        host = urllib.parse.urlsplit(text).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def node_addresses(node: NodeResource) -> set[IPAddress]:
    """Every address that identifies a node as an endpoint host."""
    found: set[IPAddress] = set(node.addresses)
    for interface in (node.ipv4_address, node.ipv6_address):
        if interface is not None:
            found.add(interface.ip)
    for tunnel in (node.wireguard_ipv4, node.wireguard_ipv6):
        if tunnel is not None:
            found.add(tunnel)
    return found


def address_index(nodes: Iterable[NodeResource]) -> dict[IPAddress, frozenset[str]]:
    """Address → the names of the nodes that have it."""
    index: dict[IPAddress, set[str]] = {}
    for node in nodes:
        for address in node_addresses(node):
            index.setdefault(address, set()).add(node.name)
    return {address: frozenset(names) for address, names in index.items()}


def node_key(node: NodeResource | None, family: IPFamily) -> Key | None:
    """A node's published key of `family`; None when absent, empty or zero."""
    if node is None:
        return None
    key = node.public_key if family is IPFamily.V4 else node.public_key_v6
    return None if key is None or key.is_zero else key


def _owner(
    ip: IPAddress, facts: BootstrapFacts, index: Mapping[IPAddress, frozenset[str]]
) -> str | EndpointVerdict:
    """The one node that has `ip`, or the verdict when there is no single node to examine."""
    if ip.is_loopback:
        return EndpointVerdict.LOCAL
    if facts.nodes is None:
        return EndpointVerdict.NODES_UNKNOWN
    owners = index.get(ip, frozenset())
    if len(owners) != 1:
        return EndpointVerdict.AMBIGUOUS if owners else EndpointVerdict.UNKNOWN_HOST
    return next(iter(owners))


def _classify(
    ip: IPAddress,
    facts: BootstrapFacts,
    kernel: KernelWireguardState,
    index: Mapping[IPAddress, frozenset[str]],
) -> tuple[EndpointVerdict, str | None]:
    owner = _owner(ip, facts, index)
    if isinstance(owner, EndpointVerdict):
        return owner, facts.node_name if owner is EndpointVerdict.LOCAL else None
    if owner == facts.node_name:
        return EndpointVerdict.LOCAL, owner
    key = node_key(facts.nodes.get(owner) if facts.nodes is not None else None, IPFamily.of(ip))
    if key is None:
        return EndpointVerdict.NO_KEY, owner
    if key in kernel.peer_keys:
        return EndpointVerdict.KEY_IN_KERNEL, owner
    return EndpointVerdict.KEY_NOT_IN_KERNEL, owner


def _filter(
    facts: FamilyFacts, all_facts: BootstrapFacts, index: Mapping[IPAddress, frozenset[str]]
) -> tuple[EndpointNote, ...]:
    notes: list[EndpointNote] = []
    for endpoint in all_facts.endpoints:
        ip = endpoint_ip(endpoint)
        if ip is None or IPFamily.of(ip) is not facts.family:
            continue
        verdict, node = _classify(ip, all_facts, facts.kernel, index)
        notes.append(EndpointNote(endpoint, verdict, node))
    return tuple(notes)


# ---- the decision --------------------------------------------------------------------------------


def _before_filter(facts: FamilyFacts, all_facts: BootstrapFacts) -> tuple[Action, Reason] | None:
    """Steps a-f: the decision when one is reached before the endpoint filter."""
    if not facts.enabled or not facts.interface_name:
        return Action.REMOVE, Reason.DISABLED
    if not all_facts.host_encryption and not all_facts.force:
        return Action.KEEP, Reason.HOST_ENCRYPTION_OFF
    kernel = facts.kernel
    if not kernel.has_key or not kernel.peer_keys:
        return Action.REMOVE, Reason.NO_KERNEL_STATE
    if all_facts.nodes is None:
        return Action.KEEP, Reason.PUBLISHED_KEY_UNKNOWN
    if node_key(all_facts.nodes.get(all_facts.node_name), facts.family) != kernel.public_key:
        return Action.REMOVE, Reason.KEY_MISMATCH
    return None


def _decide_family(
    facts: FamilyFacts, all_facts: BootstrapFacts, index: Mapping[IPAddress, frozenset[str]]
) -> FamilyDecision:
    early = _before_filter(facts, all_facts)
    if early is not None:
        return FamilyDecision(facts.family, *early, facts.interface_name)
    notes = _filter(facts, all_facts, index)
    if notes and not any(n.verdict.keeps for n in notes):
        action, reason = Action.REMOVE, Reason.NO_USABLE_ENDPOINT
    else:
        action, reason = Action.KEEP, Reason.KEY_MATCHES
    return FamilyDecision(facts.family, action, reason, facts.interface_name, notes)


def decide(facts: BootstrapFacts) -> BootstrapDecision:
    """The bootstrap decision for every family in `facts` (see the module docstring)."""
    index = address_index(facts.nodes.values()) if facts.nodes is not None else {}
    decisions = tuple(_decide_family(f, facts, index) for f in facts.families)
    dropped = {endpoint for d in decisions for endpoint in d.dropped}
    return BootstrapDecision(
        families=decisions,
        endpoints=tuple(e for e in facts.endpoints if e not in dropped),
        datastore_unknown=facts.nodes is None,
        configured_endpoints=tuple(facts.endpoints),
    )


def needs_kernel_state(family: FamilyFacts, *, host_encryption: bool, force: bool = False) -> bool:
    """Whether the decision for `family` reads the kernel (steps c onwards)."""
    return family.enabled and bool(family.interface_name) and (host_encryption or force)


def watchdog_families(
    families: Sequence[FamilyFacts], *, host_encryption: bool
) -> tuple[FamilyFacts, ...]:
    """The families the last-resort removal (§4.3) acts on: enabled, named, host encryption on."""
    if not host_encryption:
        return ()
    return tuple(f for f in families if f.enabled and f.interface_name)
