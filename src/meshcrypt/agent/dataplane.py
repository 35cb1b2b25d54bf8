"""The agent's dataplane: one WireGuard manager per IP family, rebuilt when their configuration changes.

Everything here runs on the agent's loop except `apply()`, which does the kernel I/O and runs in the
agent's single dataplane thread while the loop waits for it — so the managers are never touched by
two threads at once.

A configuration change builds a new manager for the family and replays the calculator's snapshot
into it; the new manager's first apply is a full resync, so it corrects port, MTU, keepalive and the
rest on the existing device and keeps the device's key. What the new manager cannot see is tidied
first, once, by a `Leftovers` job: the device under the old name when the interface name changed, and
the routes and rule of the old table when the routing table changed (a changed rule priority with
the same table is corrected by the new manager's rule resync).

Host encryption's firewall part, the nftables mark on incoming WireGuard UDP
(`meshcrypt.adapters.nft_mark`), is kept here too: written in the dataplane thread at the first
apply, after every configuration change and at every resync (which also repairs a tampered or
deleted table), and removed when host encryption or WireGuard goes off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from meshcrypt.adapters.backend import Backend
from meshcrypt.adapters.nft_mark import ports_to_mark
from meshcrypt.model.config import FelixConfig, WireguardFamilyConfig
from meshcrypt.model.errors import MeshcryptError, NotSupported
from meshcrypt.model.keys import Key
from meshcrypt.model.messages import DataplaneMessage
from meshcrypt.model.net import IPFamily
from meshcrypt.ports import CachedClient, Netlink, NetlinkFactory, Sysfs
from meshcrypt.routing.route_table import RouteTable
from meshcrypt.routing.rules import RuleReconciler
from meshcrypt.wireguard.dispatch import ManagerDispatch
from meshcrypt.wireguard.manager import ManagerOptions, WireguardManager

log = logging.getLogger(__name__)

FAMILIES = (IPFamily.V4, IPFamily.V6)

KeyCallback = Callable[[IPFamily, Key], None]
MtuSource = Callable[[FelixConfig, IPFamily], int | None]


def no_mtu_detection(config: FelixConfig, family: IPFamily) -> int | None:
    return None


class IncomingMark(Protocol):
    """Marks incoming WireGuard UDP (`adapters.nft_mark.NftIncomingMark`); no ports: removed."""

    def ensure(self, ports: Iterable[int], mark: int) -> bool: ...


class Leftovers:
    """Removes what an old configuration left behind that the new manager would not touch."""

    def __init__(
        self, old: WireguardFamilyConfig, new: WireguardFamilyConfig, nl: NetlinkFactory
    ) -> None:
        self.old = old
        self.delete_device = old.interface_name != new.interface_name
        self.clear_table = old.routing_table != new.routing_table
        self._nl: CachedClient[Netlink] = CachedClient(nl)

    @property
    def needed(self) -> bool:
        return self.delete_device or self.clear_table

    def apply(self) -> None:
        old, family = self.old, IPFamily(self.old.family)
        if self.delete_device:
            netlink = self._nl.get()
            link = netlink.link_by_name(old.interface_name)
            if link is not None:
                log.info("Deleting %s, left by the previous configuration", old.interface_name)
                netlink.link_delete(link.index)
            self.delete_device = False
        if self.clear_table:
            table = RouteTable(
                family, old.routing_table, old.interface_name, old.route_protocol, self._nl
            )
            # Device routes count as ours only through our device's ifindex: without it the
            # resync would delete the throw routes and leave the device routes behind.
            link = self._nl.get().link_by_name(old.interface_name)
            if link is not None:
                table.on_iface_state(old.interface_name, link.index, link.admin_up)
            table.queue_resync()
            table.apply()
            rules = RuleReconciler(family, old.routing_table, self._nl)
            rules.set_rule(None)
            rules.queue_resync()
            rules.apply()
            log.info("Cleared %s routes and rule of old table %d", family.label, old.routing_table)
            self.clear_table = False


class Dataplane:
    """The per-family managers, their dispatchers and pending leftover jobs."""

    def __init__(
        self,
        hostname: str,
        backend: Backend,
        sysfs: Sysfs,
        on_key: KeyCallback,
        mtu_source: MtuSource = no_mtu_detection,
        incoming_mark: IncomingMark | None = None,
    ) -> None:
        self.hostname = hostname
        self.backend = backend
        self._sysfs = sysfs
        self._on_key = on_key
        self._mtu_source = mtu_source
        self.managers: dict[IPFamily, WireguardManager] = {}
        self._dispatchers: list[ManagerDispatch] = []
        self._leftovers: list[Leftovers] = []
        self._lock = threading.Lock()  # guards against a second concurrent apply (a bug)
        self._incoming_mark = incoming_mark
        self._mark_wanted: tuple[tuple[int, ...], int] = ((), 0)
        self._mark_dirty = incoming_mark is not None
        self._mark_unsupported: str | None = None  # the NotSupported reason already logged

    def family_config(self, config: FelixConfig, family: IPFamily) -> WireguardFamilyConfig:
        return config.for_family(family, self._mtu_source(config, family))

    def configure(self, config: FelixConfig) -> list[IPFamily]:
        """Rebuild the managers whose configuration changed; the families rebuilt.

        The caller replays the calculator's snapshot into the rebuilt managers (`dispatch_to`).
        """
        rebuilt = []
        mark_wanted = (ports_to_mark(config), config.wireguard_mark)
        if mark_wanted != self._mark_wanted:
            self._mark_wanted = mark_wanted
            self._mark_dirty = self._incoming_mark is not None
        for family in FAMILIES:
            wanted = self.family_config(config, family)
            current = self.managers.get(family)
            if current is not None and current.config == wanted:
                continue
            napi_warned = False
            if current is not None:
                leftovers = Leftovers(current.config, wanted, self.backend.netlink)
                if current.config.enabled and leftovers.needed:
                    self._leftovers.append(leftovers)
                log.info(
                    "%s WireGuard configuration changed: %s",
                    family.label,
                    _diff(current.config, wanted),
                )
                # The same device: "threaded NAPI is not supported" need not be said again.
                napi_warned = current.napi_warned and not leftovers.delete_device
            self.managers[family] = self._manager(wanted, napi_warned)
            rebuilt.append(family)
        self._dispatchers = [ManagerDispatch(self.managers[f]) for f in FAMILIES]
        return rebuilt

    def _manager(self, config: WireguardFamilyConfig, napi_warned: bool) -> WireguardManager:
        family = IPFamily(config.family)

        def report(key: Key) -> None:
            self._on_key(family, key)

        return WireguardManager(
            self.hostname,
            config,
            netlink=self.backend.netlink,
            wireguard=self.backend.wireguard,
            sysfs=self._sysfs,
            status_callback=report,
            link_kind=self.backend.link_kind,
            # Our datastore traffic may go to host addresses: see the manager's module docstring.
            options=ManagerOptions(hold_host_routes_until_published=True, napi_warned=napi_warned),
        )

    def dispatch(self, messages: Iterable[DataplaneMessage]) -> None:
        self.dispatch_to(FAMILIES, messages)

    def dispatch_to(
        self, families: Iterable[IPFamily], messages: Iterable[DataplaneMessage]
    ) -> None:
        wanted = set(families)
        chosen = [d for d in self._dispatchers if d.family in wanted]
        for msg in messages:
            for dispatcher in chosen:
                dispatcher.on_update(msg)

    def on_link_event(self, name: str, ifindex: int, up: bool, present: bool) -> None:
        for manager in self.managers.values():
            manager.on_iface_state_changed(name, ifindex, up, present)

    def queue_resync(self) -> None:
        for manager in self.managers.values():
            manager.queue_resync()
        self._mark_dirty = self._incoming_mark is not None

    def apply(self) -> None:
        """Program the kernel (blocking). Every part is tried; the first error is raised after."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("Dataplane.apply called while another apply is running")
        try:
            first: MeshcryptError | None = None
            for leftovers in list(self._leftovers):
                try:
                    leftovers.apply()
                    self._leftovers.remove(leftovers)
                except MeshcryptError as exc:
                    first = first or exc
            for manager in self.managers.values():
                try:
                    manager.apply()
                except MeshcryptError as exc:
                    first = first or exc
            try:
                self._ensure_incoming_mark()
            except MeshcryptError as exc:
                first = first or exc
            if first is not None:
                raise first
        finally:
            self._lock.release()

    def _ensure_incoming_mark(self) -> None:
        """Write (or remove) the nftables mark when it is due; a missing nft or nf_tables is
        reported once and tried again at the next resync, other failures are retried."""
        if not self._mark_dirty or self._incoming_mark is None:
            return
        ports, mark = self._mark_wanted
        try:
            self._incoming_mark.ensure(ports, mark)
        except NotSupported as exc:
            if ports and str(exc) != self._mark_unsupported:
                log.warning(
                    "Cannot mark incoming WireGuard packets (%s): with host encryption and strict "
                    "reverse-path filtering (rp_filter=1) they will be dropped",
                    exc,
                )
                self._mark_unsupported = str(exc)
        except ValueError as exc:  # a port or mark nft cannot take: the config validation missed it
            log.error("Cannot mark incoming WireGuard packets: %s", exc)
        self._mark_dirty = False


def _diff(old: WireguardFamilyConfig, new: WireguardFamilyConfig) -> str:
    changes = [
        f"{name} {getattr(old, name)!r} -> {getattr(new, name)!r}"
        for name in old.__dataclass_fields__
        if getattr(old, name) != getattr(new, name)
    ]
    return ", ".join(changes)
