"""The WireGuard manager of one IP family (`reference-behavior.md` §2).

`on_*` methods record intent and never touch the kernel. `apply()` does all the I/O, in phases:

1. fold pending node updates into the cache and set the desired route for every CIDR;
2. ensure the link (created, MTU, admin up) — or wait for it;
3. the WireGuard device (delta, or a full read-back resync when out of sync), then the interface
   address and the routing table — the device first, so a route never points at a peer that is not
   there yet, and so a key read back from the device decides the host routes of the same apply;
4. threaded NAPI; then, only when everything above succeeded, the routing rule;
5. publish our public key through the status callback when it is not yet reported.

Which parts need a full read-back is kept as a set of `SyncArea`s. "Not supported" (no WireGuard in
the kernel or backend) is a state: a zero key is published and nothing is retried until a resync.

Host routes wait for our key (`ManagerOptions.hold_host_routes_until_published`, set by the
agent). With host encryption, the remote nodes' host addresses are peer CIDRs, so the agent's own
datastore traffic may go through WireGuard. A device with a key the other nodes do not know yet
(new device: first start, reboot, re-creation) would then encrypt that traffic to peers that drop
it, and the key could never be published if the datastore is reachable only through one of them.
So, while the device's key is not the key the datastore shows for this node, the host CIDRs get
*throw* routes (host traffic goes out directly), everything else is programmed as usual, and the
peers keep the host CIDRs in their allowed IPs, so a peer that already knows our key can reach us
encrypted. Once the datastore shows the device's key the host routes turn into device routes.
Felix does not wait (its datastore, the Kubernetes API, sits outside the mesh); see
`meshcrypt.agent.bootstrap` for the whole picture.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from meshcrypt.model.config import WireguardFamilyConfig
from meshcrypt.model.dataplane import InterfaceAddress, Link, RouteKind, Rule
from meshcrypt.model.errors import (
    ConfigError,
    KernelError,
    MeshcryptError,
    NotFound,
    NotSupported,
    UpdateFailed,
    WaitingForLink,
)
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import CIDR, IPAddress, IPFamily, host_cidr
from meshcrypt.ports import (
    CachedClient,
    Netlink,
    NetlinkFactory,
    Sysfs,
    WireguardDevices,
    WireguardFactory,
)
from meshcrypt.routing.route_table import RouteTable
from meshcrypt.routing.rules import RuleReconciler
from meshcrypt.wireguard.node_state import ZERO_KEY, NodeCache, NodeData, NodeUpdate
from meshcrypt.wireguard.peer_plan import PeerSettings, plan_delta, plan_resync

log = logging.getLogger(__name__)

SRC_VALID_MARK = "/proc/sys/net/ipv4/conf/all/src_valid_mark"
NOT_SUPPORTED_LOG_INTERVAL = 4 * 3600.0
RESERVED_TABLES = frozenset({0, 253, 254, 255})

StatusCallback = Callable[[Key], None]


class SyncArea(enum.Enum):
    """Parts of the kernel state that need a full check at the next apply."""

    LINK = "link"
    ADDRESS = "address"
    WIREGUARD = "wireguard"
    NAPI = "napi"


def napi_path(iface: str) -> str:
    return f"/sys/class/net/{iface}/threaded"


def check_table(config: WireguardFamilyConfig) -> bool:
    """Whether the routing table index is usable. Raises ConfigError if it isn't but is needed."""
    valid = config.routing_table not in RESERVED_TABLES and 0 < config.routing_table < 0xFFFFFFFF
    if not valid and config.enabled:
        raise ConfigError("RouteTableRanges", config.routing_table, "reserved or out of range")
    return valid


@dataclass(frozen=True, slots=True)
class ManagerOptions:
    """How the agent wants a manager to behave beyond the Felix configuration."""

    #: With host encryption, route host addresses directly until the datastore shows the device's
    #: key (see the module docstring). Off by default: the reference does not wait.
    hold_host_routes_until_published: bool = False
    #: "Threaded NAPI is not supported" was already logged for this device (by a predecessor).
    napi_warned: bool = False


DEFAULT_OPTIONS = ManagerOptions()


class WireguardManager:
    """Programs one family's WireGuard device, routing table and rule from dataplane intent."""

    def __init__(
        self,
        hostname: str,
        config: WireguardFamilyConfig,
        *,
        netlink: NetlinkFactory,
        wireguard: WireguardFactory,
        sysfs: Sysfs,
        status_callback: StatusCallback,
        link_kind: str = "wireguard",
        key_generator: Callable[[], PrivateKey] = PrivateKey.generate,
        clock: Callable[[], float] = time.monotonic,
        options: ManagerOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.hostname = hostname
        self.config = config
        self.family = IPFamily(config.family)
        self._link_kind = link_kind
        self._sysfs = sysfs
        self._status_callback = status_callback
        self._key_generator = key_generator
        self._clock = clock
        self._nl: CachedClient[Netlink] = CachedClient(netlink)
        self._wg: CachedClient[WireguardDevices] = CachedClient(wireguard)
        self._settings = PeerSettings(
            config.listening_port, config.persistent_keepalive, config.firewall_mark
        )
        self.route_table: RouteTable | None = None
        self.rules: RuleReconciler | None = None
        if check_table(config):
            self.route_table = RouteTable(
                self.family,
                config.routing_table,
                config.interface_name,
                config.route_protocol,
                self._nl,
                enabled=not config.route_sync_disabled,
            )
            self.rules = RuleReconciler(self.family, config.routing_table, self._nl)
        self._out_of_sync: set[SyncArea] = set(SyncArea)
        self._not_supported = False
        self._not_supported_logged_at: float | None = None
        self._napi_refused: bool | None = None
        self._napi_warned = options.napi_warned  # "threaded NAPI is not supported" was logged
        self._link: Link | None = None
        self._iface_up = False
        # The ifindex of a link this manager created or set up itself, until the link monitor
        # reports it up: the events before that are the echo of our own doing (see
        # `on_iface_state_changed`).
        self._link_echo: int | None = None
        self._our_key: Key | None = None
        self._key_reported = False
        self._tunnel_addr: IPAddress | None = None
        self._host_addr: IPAddress | None = None
        self._iface_addr: IPAddress | None = None
        self._local_ips: set[IPAddress] = set()
        self._local_cidrs: set[CIDR] = set()
        self._local_updated = False
        self._cidr_owner: dict[CIDR, str] = {}
        self._host_cidrs: set[CIDR] = set()  # remote host addresses (REMOTE_HOST routes)
        self._hold_host_routes = options.hold_host_routes_until_published and config.host_encryption
        self._device_key: Key | None = None  # the key read back from the device at the last resync
        self._published_key: Key | None = None  # the key the datastore shows for this node
        self._host_routes_open = not self._hold_host_routes
        self._retarget: set[str] = set()  # nodes whose route kinds need recomputing
        self._pending: dict[str, NodeUpdate] = {}
        self._cache = NodeCache()

    # -- read-only views ----------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def not_supported(self) -> bool:
        return self._not_supported

    @property
    def public_key(self) -> Key | None:
        return self._our_key

    @property
    def nodes(self) -> dict[str, NodeData]:
        return self._cache.nodes

    @property
    def programmed_peers(self) -> int:
        """How many remote nodes are programmed as peers (kept up to date: no walk)."""
        return self._cache.programmed_count

    @property
    def shared_key_count(self) -> int:
        """How many remote nodes are not programmed because their key is shared (no walk)."""
        return self._cache.shared_key_count

    @property
    def shared_key_nodes(self) -> list[str]:
        """Remote nodes not programmed because another node publishes the same key."""
        return sorted(
            name
            for name, node in self._cache.nodes.items()
            if name != self.hostname
            and not node.public_key.is_zero
            and len(self._cache.owners(node.public_key)) > 1
        )

    @property
    def interface_address(self) -> IPAddress | None:
        return self._iface_addr

    @property
    def napi_warned(self) -> bool:
        """Whether "threaded NAPI is not supported" was logged (a successor manager inherits it)."""
        return self._napi_warned

    @property
    def host_routes_open(self) -> bool:
        """Whether host CIDRs are routed through WireGuard (see the module docstring)."""
        return self._host_routes_open

    @property
    def out_of_sync(self) -> frozenset[SyncArea]:
        return frozenset(self._out_of_sync)

    def peer_node_for_key(self, key: Key) -> str | None:
        owners = self._cache.owners(key)
        return next(iter(owners)) if len(owners) == 1 else None

    # -- intent: endpoints, routes, keys ------------------------------------------------------

    def _update_for(self, name: str) -> NodeUpdate:
        return self._pending.setdefault(name, NodeUpdate())

    def endpoint_update(self, name: str, addr: IPAddress) -> None:
        if not self.enabled or addr.version != self.family:
            return
        if name == self.hostname:
            self._host_addr = addr
            self._refresh_iface_addr()
            return
        update = self._update_for(name)
        cached = self._cache.nodes.get(name)
        update.endpoint = None if cached is not None and cached.endpoint == addr else addr
        update.deleted = False

    def endpoint_remove(self, name: str) -> None:
        if not self.enabled or name == self.hostname:
            return
        if name not in self._cache.nodes and name not in self._pending:
            return
        update = self._update_for(name)
        update.deleted = True
        update.endpoint = None

    def route_update(self, name: str, cidr: CIDR, *, host: bool = False) -> None:
        """`cidr` belongs to node `name`; `host`: it is one of the node's host addresses."""
        if not self.enabled or cidr.version != self.family:
            return
        owner = self._cidr_owner.get(cidr)
        if owner == name and host != (cidr in self._host_cidrs):
            self._retarget.add(name)  # same node, other kind of address: its route may change
        if host:
            self._host_cidrs.add(cidr)
        else:
            self._host_cidrs.discard(cidr)
        if owner == name:
            return
        if owner is not None:
            self.route_remove(cidr)
        self._cidr_owner[cidr] = name
        if name == self.hostname:
            if cidr.prefixlen == cidr.max_prefixlen:
                self._local_ips.add(cidr.network_address)
            else:
                self._local_cidrs.add(cidr)
            self._local_updated = True
            return
        update = self._update_for(name)
        cached = self._cache.nodes.get(name)
        if cached is not None and cidr in cached.cidrs:
            update.cidrs_deleted.discard(cidr)
        else:
            update.cidrs_added.add(cidr)

    def route_remove(self, cidr: CIDR) -> None:
        if not self.enabled or cidr.version != self.family:
            return
        owner = self._cidr_owner.pop(cidr, None)
        self._host_cidrs.discard(cidr)
        if owner is None:
            return
        if owner == self.hostname:
            if cidr.prefixlen == cidr.max_prefixlen:
                self._local_ips.discard(cidr.network_address)
            else:  # a block: the address at its start may still be a local address of its own
                self._local_cidrs.discard(cidr)
            self._local_updated = True
            return
        update = self._update_for(owner)
        cached = self._cache.nodes.get(owner)
        if cached is not None and cidr in cached.cidrs:
            update.cidrs_deleted.add(cidr)
        else:
            update.cidrs_added.discard(cidr)

    def endpoint_wireguard_update(self, name: str, key: Key, iface_addr: IPAddress | None) -> None:
        if not self.enabled:
            return
        if name == self.hostname:
            self._published_key = key
            if self._our_key != key:
                log.info("%s public key out of sync or updated; checking the device", self._ctx)
                self._our_key = key
                self._out_of_sync.add(SyncArea.WIREGUARD)
            if iface_addr is not None and iface_addr.version != self.family:
                iface_addr = None
            self._tunnel_addr = iface_addr
            self._refresh_iface_addr()
            return
        update = self._update_for(name)
        cached = self._cache.nodes.get(name)
        if cached is not None and cached.public_key == key:
            update.public_key = None
        else:
            update.public_key = key

    def endpoint_wireguard_remove(self, name: str) -> None:
        if not self.enabled:
            return
        if name == self.hostname:
            self.endpoint_wireguard_update(name, ZERO_KEY, None)
            return
        if name not in self._cache.nodes and name not in self._pending:
            return
        self.endpoint_wireguard_update(name, ZERO_KEY, None)

    def _refresh_iface_addr(self) -> None:
        """Device address: the tunnel address, else (with host encryption) the node address."""
        desired = self._tunnel_addr
        if desired is None and self.config.host_encryption:
            desired = self._host_addr
        if desired != self._iface_addr:
            self._iface_addr = desired
            self._out_of_sync.add(SyncArea.ADDRESS)

    # -- intent: link state and resync --------------------------------------------------------

    def on_iface_state_changed(
        self, name: str, ifindex: int, up: bool, present: bool = True
    ) -> None:
        if name != self.config.interface_name:
            return
        if self._is_echo(ifindex, up, present):
            return
        if up and not self._iface_up:
            log.info("%s interface is up; full WireGuard resync", self._ctx)
            self._out_of_sync.add(SyncArea.WIREGUARD)
        if not present or not up:
            # Recreate or re-enable the link promptly instead of waiting for the periodic resync.
            self._out_of_sync.update({SyncArea.LINK, SyncArea.ADDRESS, SyncArea.WIREGUARD})
            self._link = None
        self._iface_up = up and present
        if self.route_table is not None:
            self.route_table.on_iface_state(name, ifindex, up and present)

    def _is_echo(self, ifindex: int, up: bool, present: bool) -> bool:
        """Whether a link event only replays what this manager did and saw itself.

        Creating the device and setting it up produce a few "down" events and then one "up" (the
        kernel reports the operational state, which follows a moment later). They arrive after
        the apply that caused them, which already programmed everything through the device it
        saw up. Taken at face value they would drop every device route from the route table's
        record and force a full WireGuard resync: everything programmed a second time. So while
        the manager holds the link it brought up, events for that ifindex up to the first "up"
        change nothing; any other event ends the echo and is handled as usual (a real flap after
        our own "up" event is seen as one).
        """
        echo, self._link_echo = self._link_echo, None
        if echo is None or echo != ifindex or not present:
            return False
        if self._link is None or self._link.index != ifindex or not self._iface_up:
            return False  # not (or no longer) holding it up: the event may matter
        if not up:
            self._link_echo = echo  # still the echo, until the "up"
        log.debug(
            "%s link event (index %d, up=%s): our own change; nothing to do", self._ctx, ifindex, up
        )
        return True

    def queue_resync(self) -> None:
        self._out_of_sync = set(SyncArea)
        self._link_echo = None  # the link is read again: later events are taken as they come
        self._not_supported = False
        if self.route_table is not None:
            self.route_table.queue_resync()
        if self.rules is not None:
            self.rules.queue_resync()

    # -- apply --------------------------------------------------------------------------------

    @property
    def _ctx(self) -> str:
        return f"[{self.family.label} {self.config.interface_name}]"

    def apply(self) -> None:
        """Program the kernel; raises a RetryableError subclass or the status callback's error."""
        try:
            self._apply_phases()
        except BaseException:
            self._publish_key(quiet=True)
            raise
        self._publish_key(quiet=False)

    def _publish_key(self, *, quiet: bool) -> None:
        if self._our_key is None or self._key_reported:
            return
        try:
            log.info("%s publishing public key %s", self._ctx, self._our_key or "<none>")
            self._status_callback(self._our_key)
        except Exception as exc:
            if not quiet:
                raise
            log.warning("%s publishing the public key failed (%s); retrying later", self._ctx, exc)
            return
        self._key_reported = True

    def _set_our_key(self, key: Key) -> None:
        if key != self._our_key:
            self._our_key = key
            self._key_reported = False

    def _apply_phases(self) -> None:
        if not self.enabled:
            if self._out_of_sync:
                self._ensure_disabled()
            return
        if self._not_supported:
            self._log_not_supported()
            return
        try:
            pending = self._take_pending()
            touched = self._fold(pending)
            self._ensure_link()
            self._program(pending, touched)
            self._ensure_rule()
        except _StopApply:
            return
        except BaseException:
            self._out_of_sync.add(SyncArea.WIREGUARD)
            raise
        finally:
            self._cache.prune(forget_programmed=SyncArea.WIREGUARD in self._out_of_sync)

    def _take_pending(self) -> dict[str, NodeUpdate]:
        if self._local_updated:
            self._local_updated = False
            wanted = set(self._local_cidrs)
            wanted.update(
                host_cidr(ip)
                for ip in self._local_ips
                if not any(ip in cidr for cidr in self._local_cidrs)
            )
            have = self._cache.nodes.get(self.hostname, NodeData()).cidrs
            update = self._update_for(self.hostname)
            update.cidrs_added = wanted - have
            update.cidrs_deleted = have - wanted
        pending, self._pending = self._pending, {}
        return pending

    def _fold(self, pending: dict[str, NodeUpdate]) -> set[str]:
        """Fold pending updates into the cache and set the desired route of every touched CIDR."""
        changed, deleted_cidrs, keys_changed = self._cache.fold(pending)
        touched = set(changed)
        for key in keys_changed:
            touched.update(self._cache.owners(key))
        retarget, self._retarget = self._retarget, set()
        if self.route_table is None:
            return touched
        for cidr in deleted_cidrs:
            # Kept when it moved to another node (whose route replaces it below); removed when no
            # node holds it any more, even if it is still owned: a local address that a local
            # block now covers is owned by this node but has no route of its own.
            if not self._cache.holds(self._cidr_owner.get(cidr), cidr):
                self.route_table.remove_route(cidr)
        for name in touched | (retarget & self._cache.nodes.keys()):
            node = self._cache.nodes[name]
            should = self._cache.should_program(name)
            for cidr in node.cidrs:
                self.route_table.set_route(cidr, self._route_kind(cidr, should))
            node.routing_to_wireguard = should
        return touched

    def _route_kind(self, cidr: CIDR, should_program: bool) -> RouteKind:
        """A device route for a peer's CIDR, unless it is a host address held back (see the module
        docstring); a throw route otherwise."""
        if should_program and (self._host_routes_open or cidr not in self._host_cidrs):
            return RouteKind.DEVICE
        return RouteKind.THROW

    def _update_host_routes_gate(self) -> None:
        """Open or close the host routes after the device's key was (re)read; re-route them."""
        if not self._hold_host_routes:
            return
        device_key = self._device_key
        open_ = (
            device_key is not None and not device_key.is_zero and device_key == self._published_key
        )
        if open_ == self._host_routes_open:
            return
        self._host_routes_open = open_
        if open_:
            log.info(
                "%s our public key is published; host addresses go through WireGuard", self._ctx
            )
        else:
            log.info(
                "%s our public key is not published yet; host addresses are routed directly "
                "until it is",
                self._ctx,
            )
        if self.route_table is None:
            return
        for cidr in self._host_cidrs:
            owner = self._cidr_owner.get(cidr)
            if owner is None or cidr not in self._cache.nodes.get(owner, NodeData()).cidrs:
                continue  # not folded yet: the next fold routes it
            should = self._cache.should_program(owner)
            self.route_table.set_route(cidr, self._route_kind(cidr, should))

    # -- link ---------------------------------------------------------------------------------

    def _ensure_link(self) -> None:
        if SyncArea.LINK not in self._out_of_sync and self._link is not None:
            return
        try:
            link = self._create_or_fix_link()
        except NotSupported as exc:
            self._set_not_supported(str(exc))
            raise _StopApply from exc
        except WaitingForLink:
            raise
        except KernelError as exc:
            self._nl.reset()
            raise UpdateFailed(f"{self._ctx} link: {exc}") from exc
        self._link = link
        self._out_of_sync.discard(SyncArea.LINK)
        if self.route_table is not None:
            self.route_table.on_iface_state(link.name, link.index, True)
        if not self._iface_up:
            self._iface_up = True

    def _create_or_fix_link(self) -> Link:
        iface = self.config.interface_name
        if self.config.host_encryption and self.family is IPFamily.V4:
            self._sysfs.write(SRC_VALID_MARK, "1")
        nl = self._nl.get()
        link = nl.link_by_name(iface)
        if link is None:
            log.info("%s WireGuard device needs to be created", self._ctx)
            nl.link_add_wireguard(iface, self.config.mtu)
            link = nl.link_by_name(iface)
            if link is None:
                raise WaitingForLink(iface)
            log.info("%s created WireGuard device (index %d)", self._ctx, link.index)
            self._link_echo = link.index
        if link.kind != self._link_kind:
            raise UpdateFailed(
                f"{self._ctx} interface {iface} has type {link.kind!r}, expected {self._link_kind!r}"
            )
        if self.config.mtu and link.mtu != self.config.mtu:
            log.info("%s setting MTU %d (was %d)", self._ctx, self.config.mtu, link.mtu)
            nl.link_set_mtu(link.index, self.config.mtu)
        if not link.admin_up:
            log.info("%s interface is not admin up; enabling it", self._ctx)
            nl.link_set_up(link.index)
            self._link_echo = link.index
            link = nl.link_by_name(iface)
            if link is None or not link.admin_up:
                log.info("%s waiting for the WireGuard link to come up", self._ctx)
                raise WaitingForLink(iface)
        return link

    def _set_not_supported(self, reason: str) -> None:
        log.info("%s WireGuard is not supported here: %s", self._ctx, reason)
        self._not_supported = True
        self._not_supported_logged_at = self._clock()
        self._out_of_sync.clear()
        self._set_our_key(ZERO_KEY)

    def _log_not_supported(self) -> None:
        now = self._clock()
        last = self._not_supported_logged_at
        if last is None or now - last >= NOT_SUPPORTED_LOG_INTERVAL:
            log.info("%s WireGuard is not supported", self._ctx)
            self._not_supported_logged_at = now

    # -- address, routes, device --------------------------------------------------------------

    def _program(self, pending: dict[str, NodeUpdate], touched: set[str]) -> None:
        assert self._link is not None
        try:
            wg = self._wg.get()
        except NotSupported as exc:
            self._set_not_supported(str(exc))
            raise _StopApply from exc
        except KernelError as exc:
            raise UpdateFailed(f"{self._ctx} WireGuard client: {exc}") from exc
        errors: list[MeshcryptError] = []
        steps: tuple[Callable[[], None], ...] = (
            lambda: self._configure_device(wg, pending, touched),
            self._update_host_routes_gate,
            self._ensure_address,
            self._apply_routes,
        )
        for step in steps:
            try:
                step()
            except MeshcryptError as exc:
                errors.append(exc)
        if errors:
            for other in errors[1:]:
                log.warning("%s %s", self._ctx, other)
            raise UpdateFailed(f"{self._ctx} {errors[0]}") from errors[0]
        self._ensure_napi()

    def _ensure_address(self) -> None:
        if SyncArea.ADDRESS not in self._out_of_sync:
            return
        assert self._link is not None
        want = (
            InterfaceAddress(self._iface_addr, self.family.host_prefixlen)
            if self._iface_addr is not None
            else None
        )
        try:
            nl = self._nl.get()
            present = nl.addresses(self._link.index, self.family)
            # The new address first: the kernel drops every IPv4 route through a device that
            # loses its last address, so replacing one must never leave the device without any.
            if want is not None and want not in present:
                log.info("%s adding address %s", self._ctx, want.address)
                nl.address_add(self._link.index, want)
            removed = False
            for addr in present:
                if addr != want and not addr.address.is_link_local:
                    log.info("%s removing old address %s", self._ctx, addr.address)
                    nl.address_delete(self._link.index, addr)
                    removed = True
        except KernelError as exc:
            self._nl.reset()
            raise UpdateFailed(f"address: {exc}") from exc
        if removed and self.route_table is not None:
            # Removing the last address (no address wanted) took our device routes with it:
            # read the table back when the routes are applied, right after this.
            self.route_table.queue_resync()
        self._out_of_sync.discard(SyncArea.ADDRESS)

    def _apply_routes(self) -> None:
        if self.route_table is not None:
            self.route_table.apply()

    def _configure_device(
        self, wg: WireguardDevices, pending: dict[str, NodeUpdate], touched: set[str]
    ) -> None:
        iface = self.config.interface_name
        try:
            if SyncArea.WIREGUARD in self._out_of_sync:
                self._resync_device(wg)
            else:
                plan = plan_delta(touched, self._cache, pending, self._settings)
                for config in (plan.removals, plan.updates):
                    if not config.is_empty:
                        wg.configure(iface, config)
                for name, key in plan.programmed.items():
                    self._cache.set_programmed(name, key)
        except KernelError as exc:
            self._wg.reset()
            log.warning("%s WireGuard programming failed; full resync next time", self._ctx)
            raise UpdateFailed(f"WireGuard device: {exc}") from exc
        self._out_of_sync.discard(SyncArea.WIREGUARD)

    def _resync_device(self, wg: WireguardDevices) -> None:
        iface = self.config.interface_name
        device = wg.device(iface)
        needs_key = device.private_key is None or device.private_key.is_zero
        if needs_key:
            log.info("%s generating a new private/public key pair", self._ctx)
        plan = plan_resync(
            device, self._cache, self._settings, self._key_generator() if needs_key else None
        )
        if not plan.config.is_empty:
            wg.configure(iface, plan.config)
        for name in self._cache.nodes:
            self._cache.set_programmed(name, plan.programmed.get(name))
        self._device_key = plan.public_key
        if plan.public_key != self._our_key:
            log.info("%s public key has been updated; sending a status notification", self._ctx)
            self._set_our_key(plan.public_key)

    def _ensure_napi(self) -> None:
        # The kernel has NAPI contexts only once the device has a peer (it refuses the write
        # before); Felix waits for any cached node, the local one included, and so reports a
        # kernel that would accept the write a moment later as not supporting it.
        if SyncArea.NAPI not in self._out_of_sync or not self._cache.programmed_count:
            return
        threaded = self.config.threading
        try:
            self._sysfs.write(napi_path(self.config.interface_name), "1" if threaded else "0")
        except NotSupported as exc:
            if threaded and not self._napi_warned:
                log.warning("%s threaded NAPI is not supported here: %s", self._ctx, exc)
                self._napi_warned = True
            self._napi_refused = True
        except KernelError as exc:
            log.warning("%s failed to set NAPI threading (retrying): %s", self._ctx, exc)
            return
        else:
            if self._napi_refused is not False:
                log.info("%s NAPI threading set to %s", self._ctx, threaded)
            self._napi_refused = False
        self._out_of_sync.discard(SyncArea.NAPI)

    def _ensure_rule(self) -> None:
        if self.rules is None:
            return
        self.rules.set_rule(
            Rule(
                family=self.family,
                priority=self.config.rule_priority,
                table=self.config.routing_table,
                mark=self.config.firewall_mark,
                mask=self.config.firewall_mark,
                invert=True,
            )
        )
        self.rules.apply()

    # -- disabled -----------------------------------------------------------------------------

    def _ensure_disabled(self) -> None:
        iface = self.config.interface_name
        try:
            nl = self._nl.get()
            link = nl.link_by_name(iface)
            if self.route_table is not None:
                if link is not None:
                    self.route_table.on_iface_state(iface, link.index, link.admin_up)
                self.route_table.clear()
                self.route_table.queue_resync()
                self.route_table.apply()
            if self.rules is not None:
                self.rules.set_rule(None)
                self.rules.apply()
            if link is not None:
                log.info("%s WireGuard is disabled; deleting the device", self._ctx)
                try:
                    nl.link_delete(link.index)
                except NotFound:
                    pass
        except KernelError as exc:
            self._nl.reset()
            raise UpdateFailed(f"{self._ctx} disabling WireGuard: {exc}") from exc
        self._out_of_sync.clear()
        self._link = None
        self._set_our_key(ZERO_KEY)


class _StopApply(Exception):
    """Internal: WireGuard turned out not to be supported; stop this apply without an error."""
