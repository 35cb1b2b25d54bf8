"""One in-memory network namespace: links, addresses, routes, rules and WireGuard devices.

`FakeKernel` holds the state and behaves like Linux where the managers can tell the difference
(checked against a real kernel, see `tests/contract`):

* deleting a link removes its addresses, its WireGuard device and every route through it;
* setting a link down removes the device routes through it;
* a device route through a link that is not admin-up fails with ENETDOWN, through a missing link ENODEV;
* IPv6 routes given metric 0 are stored with metric 1024; deleting with metric 0 matches any metric;
* adding a rule equal to an existing one in (priority, table, mark, mask) fails with EEXIST whatever the
  invert flag, and deleting a rule matches those fields and ignores the invert flag too;
* a fresh namespace has rules 0 (local), 32766 (main) and, for IPv4 only, 32767 (default).

Clients (`FakeNetlink`, `FakeWireguard`) come from `netlink_factory()` / `wireguard_factory()`; their
calls check for a closed client and an armed fault, then run the matching `nl_*` / `wg_*` method here.
Everything else public on `FakeKernel` is a test helper: read the state, or change it out of band (no
counters, no faults), as an administrator or another program would.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from meshcrypt.fakes.faults import Faults, Op
from meshcrypt.fakes.invariants import InvariantViolation
from meshcrypt.fakes.netlink import FakeNetlink
from meshcrypt.fakes.sysfs import FakeSysfs
from meshcrypt.fakes.wgdevice import DeviceState, apply_config
from meshcrypt.fakes.wireguard import FakeWireguard
from meshcrypt.model.dataplane import (
    Device,
    DeviceConfig,
    InterfaceAddress,
    Link,
    Peer,
    Route,
    RouteKey,
    RouteKind,
    Rule,
)
from meshcrypt.model.errors import KernelError, NotFound, kernel_error
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import IPFamily
from meshcrypt.ports import NetlinkFactory, WireguardFactory

LOOPBACK_INDEX = 1
WIREGUARD_KIND = "wireguard"
WIREGUARD_DEFAULT_MTU = 1420
MIN_MTU = 68
MAX_MTU = 0xFFFF
IFNAMSIZ = 16
IPV6_DEFAULT_METRIC = 1024


def default_rules(family: IPFamily) -> tuple[Rule, ...]:
    """The rules of a fresh namespace. IPv6 has no 32767 (table default) rule."""
    prios: tuple[tuple[int, int], ...] = ((0, 255), (32766, 254), (32767, 253))
    if family is IPFamily.V6:
        prios = prios[:2]
    return tuple(Rule(family, prio, table, 0, 0, False) for prio, table in prios)


@dataclass(frozen=True, slots=True)
class Counters:
    """Successful operations (client counters: creation attempts, including injected failures).

    Subtract two snapshots to get what happened in between; `nonzero()` lists only what changed.
    """

    link_add: int = 0
    link_delete: int = 0
    link_set_mtu: int = 0
    link_set_up: int = 0
    address_add: int = 0
    address_delete: int = 0
    route_add: int = 0  # a new route key
    route_update: int = 0  # an existing key replaced by a different value (identical: not counted)
    route_delete: int = 0  # routes actually removed (not cascades, not already-gone ones)
    rule_add: int = 0
    rule_delete: int = 0
    wg_configure: int = 0
    netlink_clients: int = 0
    wireguard_clients: int = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in _COUNTER_FIELDS}
        )

    def nonzero(self) -> dict[str, int]:
        values = ((f.name, getattr(self, f.name)) for f in _COUNTER_FIELDS)
        return {name: value for name, value in values if value}


_COUNTER_FIELDS = dataclasses.fields(Counters)

CounterName = Literal[
    "link_add",
    "link_delete",
    "link_set_mtu",
    "link_set_up",
    "address_add",
    "address_delete",
    "route_add",
    "route_update",
    "route_delete",
    "rule_add",
    "rule_delete",
    "wg_configure",
    "netlink_clients",
    "wireguard_clients",
]


class Keep(enum.Enum):
    """Marker for "leave this field as it is" in `FakeKernel.tamper_device`."""

    KEEP = enum.auto()


KEEP = Keep.KEEP


@dataclass(slots=True)
class _LinkState:
    name: str
    index: int
    kind: str
    mtu: int
    admin_up: bool = False
    oper_up: bool = False
    up_requested: bool = False
    addresses: list[InterfaceAddress] = field(default_factory=list)

    def value(self) -> Link:
        return Link(self.name, self.index, self.kind, self.mtu, self.admin_up, self.oper_up)


class FakeKernel:
    """One fake network namespace shared by any number of fake clients."""

    def __init__(
        self,
        *,
        immediate_link_up: bool = False,
        wireguard_supported: bool = True,
        enforce_invariants: bool = True,
    ) -> None:
        # False (the reference mock's default): link_set_up only records the request; the link stays
        # down until the test calls set_link_up(). True: link_set_up brings it up at once, like Linux.
        self.immediate_link_up = immediate_link_up
        # False: link_add_wireguard raises NotSupported (no kernel module, no userspace fallback).
        self.wireguard_supported = wireguard_supported
        # False: update_only/remove of unknown peers are skipped as wireguard-go does, not violations.
        self.enforce_invariants = enforce_invariants
        self.faults = Faults()
        self.sysfs = FakeSysfs(faults=self.faults, link_exists=self.has_link)
        self._links: dict[str, _LinkState] = {}
        self._next_index = LOOPBACK_INDEX + 1
        self._routes: dict[RouteKey, Route] = {}
        self._rules: dict[IPFamily, list[Rule]] = {f: list(default_rules(f)) for f in IPFamily}
        self._devices: dict[str, DeviceState] = {}
        self._counters = Counters()
        self._netlink_clients: list[FakeNetlink] = []
        self._wireguard_clients: list[FakeWireguard] = []
        lo = _LinkState("lo", LOOPBACK_INDEX, "", 65536, admin_up=True, oper_up=True)
        self._links[lo.name] = lo

    # ---- clients ---------------------------------------------------------------------------------

    @property
    def counters(self) -> Counters:
        return self._counters

    def netlink_factory(self) -> NetlinkFactory:
        return self.new_netlink_client

    def wireguard_factory(self) -> WireguardFactory:
        return self.new_wireguard_client

    def new_netlink_client(self) -> FakeNetlink:
        self._bump("netlink_clients")
        self.faults.check(Op.NEW_NETLINK_CLIENT)
        client = FakeNetlink(self)
        self._netlink_clients.append(client)
        return client

    def new_wireguard_client(self) -> FakeWireguard:
        self._bump("wireguard_clients")
        self.faults.check(Op.NEW_WIREGUARD_CLIENT)
        client = FakeWireguard(self)
        self._wireguard_clients.append(client)
        return client

    @property
    def open_netlink_clients(self) -> int:
        return sum(not c.closed for c in self._netlink_clients)

    @property
    def open_wireguard_clients(self) -> int:
        return sum(not c.closed for c in self._wireguard_clients)

    # ---- netlink semantics (called by FakeNetlink after its checks) --------------------------------

    def nl_link_by_name(self, name: str) -> Link | None:
        state = self._links.get(name)
        return state.value() if state else None

    def nl_link_add_wireguard(self, name: str, mtu: int) -> None:
        _check_ifname(name)
        if name in self._links:
            raise kernel_error(f"link add {name}", errno.EEXIST)
        if not self.wireguard_supported:
            raise kernel_error(f"link add {name} type wireguard", errno.EOPNOTSUPP)
        mtu = mtu or WIREGUARD_DEFAULT_MTU
        _check_mtu(mtu)
        self._create_link(name, WIREGUARD_KIND, mtu, up=False, index=None)
        self._bump("link_add")

    def nl_link_set_mtu(self, index: int, mtu: int) -> None:
        state = self._link_at(index)
        _check_mtu(mtu)
        state.mtu = mtu
        self._bump("link_set_mtu")

    def nl_link_set_up(self, index: int) -> None:
        state = self._link_at(index)
        if self.immediate_link_up:
            state.admin_up = state.oper_up = True
        else:
            state.up_requested = True
        self._bump("link_set_up")

    def nl_link_delete(self, index: int) -> None:
        state = self._link_at(index)
        if index == LOOPBACK_INDEX:
            raise kernel_error("link delete lo", errno.EOPNOTSUPP)
        self._remove_link(state)
        self._bump("link_delete")

    def nl_addresses(self, index: int, family: IPFamily) -> list[InterfaceAddress]:
        state = self._index_map().get(index)
        if state is None:
            return []  # a filtered dump of a missing link is simply empty
        return [a for a in state.addresses if a.address.version == family]

    def nl_address_add(self, index: int, address: InterfaceAddress) -> None:
        state = self._link_at(index)
        _check_prefixlen(address)
        if any(_addresses_collide(a, address) for a in state.addresses):
            raise kernel_error(f"address add {address.address}", errno.EEXIST)
        state.addresses.append(address)
        self._bump("address_add")

    def nl_address_delete(self, index: int, address: InterfaceAddress) -> None:
        state = self._link_at(index)
        if address not in state.addresses:
            raise kernel_error(f"address delete {address.address}", errno.EADDRNOTAVAIL)
        state.addresses.remove(address)
        self._bump("address_delete")

    def nl_routes(self, table: int, family: IPFamily) -> list[Route]:
        return self.routes_in(table, family)

    def nl_routes_replace(self, routes: Sequence[Route]) -> None:
        """Like a netlink batch: every valid route is applied; then the first error is raised."""
        for route in routes:
            _check_route_shape(route)
        first_error: KernelError | None = None
        for route in routes:
            try:
                self._replace_route(route)
            except KernelError as exc:  # the batch carries on, as the kernel's does
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def nl_routes_delete(self, routes: Sequence[Route]) -> None:
        for route in routes:
            _check_route_shape(route)
        for route in routes:
            key = self._find_route_key(route)
            if key is not None:
                del self._routes[key]
                self._bump("route_delete")

    def nl_rules(self, family: IPFamily) -> list[Rule]:
        return self.rules_of(family)

    def nl_rule_add(self, rule: Rule) -> None:
        if any(_rules_match(r, rule) for r in self._rules[rule.family]):
            raise kernel_error(f"rule add {rule}", errno.EEXIST)
        self.insert_rule(rule)
        self._bump("rule_add")

    def nl_rule_delete(self, rule: Rule) -> None:
        rules = self._rules[rule.family]
        for i, existing in enumerate(rules):
            if _rules_match(existing, rule):
                del rules[i]
                self._bump("rule_delete")
                return
        raise kernel_error(f"rule delete {rule}", errno.ENOENT)

    # ---- WireGuard semantics (called by FakeWireguard after its checks) ----------------------------

    def wg_device(self, name: str) -> Device:
        return self.device(name)

    def wg_configure(self, name: str, config: DeviceConfig) -> None:
        state = self._device_state(name)
        self._devices[name] = apply_config(
            state, config, enforce_invariants=self.enforce_invariants
        )
        self._bump("wg_configure")

    # ---- test helpers: links -----------------------------------------------------------------------

    def add_link(
        self,
        name: str,
        *,
        kind: str = "veth",
        mtu: int = 1500,
        up: bool = False,
        index: int | None = None,
    ) -> Link:
        """Create a link out of band (a kind of "wireguard" gets an empty WireGuard device)."""
        _check_ifname(name)
        if name in self._links:
            raise ValueError(f"link {name} already exists")
        if index is not None and index in self._index_map():
            raise ValueError(f"ifindex {index} already used")
        return self._create_link(name, kind, mtu, up=up, index=index).value()

    def has_link(self, name: str) -> bool:
        return name in self._links

    def link(self, name: str) -> Link:
        """The link called `name`; NotFound when there is none."""
        return self._link_named(name).value()

    def links(self) -> list[Link]:
        return sorted((s.value() for s in self._links.values()), key=lambda link: link.index)

    def up_requested(self, name: str) -> bool:
        """Whether link_set_up was called while `immediate_link_up` is False and not yet honoured."""
        return self._link_named(name).up_requested

    def set_link_up(self, name: str, up: bool = True) -> None:
        """Bring a link fully up (admin and operational) or down, as the test's "link monitor"."""
        self.set_link_state(name, admin_up=up, oper_up=up)

    def set_link_state(self, name: str, *, admin_up: bool, oper_up: bool) -> None:
        if oper_up and not admin_up:
            raise ValueError("a link cannot be operationally up while administratively down")
        state = self._link_named(name)
        state.admin_up, state.oper_up = admin_up, oper_up
        state.up_requested = False
        if not admin_up:
            self._drop_routes_via(state.index)

    def set_link_mtu(self, name: str, mtu: int) -> None:
        self._link_named(name).mtu = mtu

    def delete_link(self, name: str) -> None:
        self._remove_link(self._link_named(name))

    def addresses_of(self, name: str, family: IPFamily | None = None) -> list[InterfaceAddress]:
        addresses = self._link_named(name).addresses
        return [a for a in addresses if family is None or a.address.version == family]

    def add_address(self, name: str, address: InterfaceAddress) -> None:
        self._link_named(name).addresses.append(address)

    # ---- test helpers: routes and rules ------------------------------------------------------------

    def routes_in(self, table: int, family: IPFamily) -> list[Route]:
        """The routes of one table and family, in address order."""
        found = [r for r in self._routes.values() if r.table == table and r.family is family]
        return sorted(found, key=lambda r: (int(r.dst.network_address), r.dst.prefixlen, r.metric))

    def all_routes(self) -> list[Route]:
        return list(self._routes.values())

    def route(self, key: RouteKey) -> Route | None:
        return self._routes.get(key)

    def put_route(self, route: Route) -> None:
        """Install a route out of band, without the up-link check (metric taken as given)."""
        _check_route_shape(route)
        self._routes[route.key] = route

    def remove_route(self, key: RouteKey) -> None:
        if self._routes.pop(key, None) is None:
            raise KeyError(f"no route {key}")

    def rules_of(self, family: IPFamily) -> list[Rule]:
        """The rules of one family in kernel order (priority, then insertion)."""
        return list(self._rules[family])

    def insert_rule(self, rule: Rule) -> None:
        """Add a rule out of band, after every rule of the same or lower priority; no collision check."""
        rules = self._rules[rule.family]
        position = next((i for i, r in enumerate(rules) if r.priority > rule.priority), len(rules))
        rules.insert(position, rule)

    def remove_rule(self, rule: Rule) -> None:
        """Remove the first rule exactly equal to `rule` (invert flag included)."""
        self._rules[rule.family].remove(rule)

    # ---- test helpers: WireGuard -------------------------------------------------------------------

    def device(self, name: str) -> Device:
        """A snapshot (copy) of the WireGuard device of link `name`; NotFound when there is none."""
        return self._device_state(name).snapshot(name)

    def tamper_device(
        self,
        name: str,
        *,
        private_key: PrivateKey | Keep | None = KEEP,
        listen_port: int | None = None,
        fwmark: int | None = None,
        peers: Iterable[Peer] | None = None,
    ) -> None:
        """Change a device out of band. `peers` replaces every peer with exactly the values given."""
        state = self._device_state(name)
        if listen_port is not None:
            state.listen_port = listen_port
        if fwmark is not None:
            state.fwmark = fwmark
        if peers is not None:
            state.peers = {p.public_key: p for p in peers}
        if not isinstance(private_key, Keep):
            state.set_private_key(private_key)

    def record_traffic(
        self,
        name: str,
        key: Key,
        *,
        rx_bytes: int = 0,
        tx_bytes: int = 0,
        handshake_at: float | None = None,
    ) -> None:
        """Add traffic counters (and optionally a handshake time) to a peer, as real traffic would."""
        state = self._device_state(name)
        peer = state.peers[key]
        state.peers[key] = dataclasses.replace(
            peer,
            rx_bytes=peer.rx_bytes + rx_bytes,
            tx_bytes=peer.tx_bytes + tx_bytes,
            last_handshake=peer.last_handshake if handshake_at is None else handshake_at,
        )

    # ---- internals ---------------------------------------------------------------------------------

    def _bump(self, name: CounterName) -> None:
        self._counters = dataclasses.replace(
            self._counters, **{name: getattr(self._counters, name) + 1}
        )

    def _index_map(self) -> dict[int, _LinkState]:
        return {s.index: s for s in self._links.values()}

    def _link_at(self, index: int) -> _LinkState:
        state = self._index_map().get(index)
        if state is None:
            raise kernel_error(f"link index {index}", errno.ENODEV)
        return state

    def _link_named(self, name: str) -> _LinkState:
        state = self._links.get(name)
        if state is None:
            raise NotFound(f"no link {name}", errno.ENODEV)
        return state

    def _create_link(
        self, name: str, kind: str, mtu: int, *, up: bool, index: int | None
    ) -> _LinkState:
        if index is None:
            index = self._next_index
        self._next_index = max(self._next_index, index + 1)
        state = _LinkState(name, index, kind, mtu, admin_up=up, oper_up=up)
        self._links[name] = state
        if kind == WIREGUARD_KIND:
            self._devices[name] = DeviceState()
        return state

    def _remove_link(self, state: _LinkState) -> None:
        del self._links[state.name]
        self._devices.pop(state.name, None)
        self._drop_routes_via(state.index)

    def _drop_routes_via(self, index: int) -> None:
        doomed = [key for key, route in self._routes.items() if route.ifindex == index]
        for key in doomed:
            del self._routes[key]

    def _device_state(self, name: str) -> DeviceState:
        state = self._devices.get(name)
        if state is None:
            raise NotFound(f"no WireGuard device {name}", errno.ENODEV)
        return state

    def _replace_route(self, route: Route) -> None:
        if route.family is IPFamily.V6 and route.metric == 0:
            route = dataclasses.replace(route, metric=IPV6_DEFAULT_METRIC)
        if route.kind is RouteKind.DEVICE:
            assert route.ifindex is not None  # checked by _check_route_shape
            link = self._link_at(route.ifindex)
            if not link.admin_up:
                raise kernel_error(
                    f"route {route.dst}: device for nexthop is not up", errno.ENETDOWN
                )
        old = self._routes.get(route.key)
        if old == route:
            return
        self._routes[route.key] = route
        self._bump("route_add" if old is None else "route_update")

    def _find_route_key(self, route: Route) -> RouteKey | None:
        """The route a delete of `route` takes, as the kernel matches it: table and destination;
        the metric unless 0 (then any, the lowest first); for a device route its interface; for a
        throw route in IPv4 the type (IPv6 ignores the type, and a throw route names no interface).
        """
        found = [
            k
            for k, r in self._routes.items()
            if k.table == route.table
            and k.dst == route.dst
            and route.metric in (0, k.metric)
            and _delete_matches(route, r)
        ]
        return min(found, key=lambda k: k.metric, default=None)


def _delete_matches(wanted: Route, present: Route) -> bool:
    if wanted.kind is RouteKind.DEVICE:
        return present.kind is RouteKind.DEVICE and present.ifindex == wanted.ifindex
    return wanted.family is IPFamily.V6 or present.kind is RouteKind.THROW


def _check_ifname(name: str) -> None:
    if (
        not name
        or len(name) >= IFNAMSIZ
        or name in (".", "..")
        or any(c in name for c in "/: \t\n")
    ):
        raise kernel_error(f"invalid interface name {name!r}", errno.EINVAL)


def _check_mtu(mtu: int) -> None:
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise kernel_error(f"mtu {mtu}", errno.EINVAL)


def _check_prefixlen(address: InterfaceAddress) -> None:
    if not 0 <= address.prefixlen <= address.address.max_prefixlen:
        raise kernel_error(f"prefix length {address.prefixlen}", errno.EINVAL)


def _addresses_collide(a: InterfaceAddress, b: InterfaceAddress) -> bool:
    """IPv4 keys addresses by (address, prefix length), IPv6 by address alone."""
    if a.address != b.address:
        return False
    return a.address.version == 6 or a.prefixlen == b.prefixlen


def _rules_match(a: Rule, b: Rule) -> bool:
    """The kernel's rule identity for add (EEXIST) and delete: the invert flag is not part of it."""
    return (a.family, a.priority, a.table, a.mark, a.mask) == (
        b.family,
        b.priority,
        b.table,
        b.mark,
        b.mask,
    )


def _check_route_shape(route: Route) -> None:
    if route.kind is RouteKind.DEVICE and route.ifindex is None:
        raise InvariantViolation(f"device route {route.dst} without an interface")
    if route.kind is RouteKind.THROW and route.ifindex is not None:
        raise InvariantViolation(f"throw route {route.dst} with an interface (model says None)")
