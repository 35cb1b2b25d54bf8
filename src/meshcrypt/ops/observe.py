"""What the operator commands read from the dataplane of one node, per IP family.

`observe_family` goes through the ports (`Netlink`, `WireguardDevices`), so the unit tests run it on
`meshcrypt.fakes.FakeKernel` and the commands on the real adapters. It never raises for a kernel
error: what could not be read is recorded in `errors`, and the report says so. The private key the
device returns is dropped here, so no report can print it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshcrypt.model.dataplane import (
    Device,
    Endpoint,
    InterfaceAddress,
    Link,
    Route,
    RouteKind,
    Rule,
)
from meshcrypt.model.errors import KernelError, NotFound
from meshcrypt.model.keys import Key
from meshcrypt.model.net import CIDR, IPFamily
from meshcrypt.ops.cluster import cidr_order
from meshcrypt.ports import Netlink, WireguardDevices

#: How the commands name a backend, by the link kind netlink reports for the device.
BACKEND_OF_KIND = {"wireguard": "kernel", "tun": "userspace"}

#: WireGuard's encapsulation overhead per family (the MTU auto-detection margins, §3).
MTU_OVERHEAD = {IPFamily.V4: 60, IPFamily.V6: 80}


@dataclass(frozen=True, slots=True)
class PeerView:
    public_key: Key
    endpoint: Endpoint | None
    allowed_ips: tuple[CIDR, ...]
    persistent_keepalive: int
    last_handshake: float  # unix seconds, 0 = never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A WireGuard device without its private key."""

    name: str
    public_key: Key | None
    listen_port: int
    fwmark: int
    peers: tuple[PeerView, ...]

    @classmethod
    def of(cls, device: Device) -> DeviceView:
        peers = tuple(
            PeerView(
                public_key=p.public_key,
                endpoint=p.endpoint,
                allowed_ips=tuple(sorted(p.allowed_ips, key=cidr_order)),
                persistent_keepalive=p.persistent_keepalive,
                last_handshake=p.last_handshake,
                rx_bytes=p.rx_bytes,
                tx_bytes=p.tx_bytes,
            )
            for p in sorted(device.peers.values(), key=lambda p: p.public_key.raw)
        )
        return cls(device.name, device.public_key, device.listen_port, device.fwmark, peers)


@dataclass(frozen=True, slots=True)
class FamilyObservation:
    """One family's device, routes and rules as read from the kernel (or wireguard-go)."""

    family: IPFamily
    interface: str
    table: int
    link: Link | None = None
    device: DeviceView | None = None
    addresses: tuple[InterfaceAddress, ...] = ()
    routes: tuple[Route, ...] = ()  # every route of the family in our table
    rules: tuple[Rule, ...] = ()  # every rule of the family that looks up our table
    errors: tuple[str, ...] = ()

    @property
    def backend(self) -> str | None:
        if self.link is None:
            return None
        return BACKEND_OF_KIND.get(self.link.kind, self.link.kind or "unknown")

    def owns(self, route: Route) -> bool:
        """Ours: a throw route, or a route through our device (as the route table defines it)."""
        if route.kind is RouteKind.THROW:
            return True
        return self.link is not None and route.ifindex == self.link.index


WireguardOpener = Callable[[Link], WireguardDevices]


def observe_family(
    netlink: Netlink,
    open_wireguard: WireguardOpener,
    family: IPFamily,
    interface: str,
    table: int,
) -> FamilyObservation:
    """Read the link, its WireGuard device, its addresses, our table and the rules that use it."""
    errors: list[str] = []
    link: Link | None = None
    device: DeviceView | None = None
    addresses: list[InterfaceAddress] = []
    routes: list[Route] = []
    rules: list[Rule] = []
    try:
        link = netlink.link_by_name(interface)
    except KernelError as exc:
        errors.append(f"reading link {interface}: {exc}")
    if link is not None:
        try:
            addresses = netlink.addresses(link.index, family)
        except KernelError as exc:
            errors.append(f"reading the addresses of {interface}: {exc}")
        try:
            wg = open_wireguard(link)
        except KernelError as exc:
            errors.append(f"opening the WireGuard interface for {interface}: {exc}")
        else:
            try:
                device = DeviceView.of(wg.device(interface))
            except NotFound as exc:
                errors.append(f"no WireGuard device {interface} answers: {exc}")
            except KernelError as exc:
                errors.append(f"reading WireGuard device {interface}: {exc}")
            finally:
                wg.close()
    try:
        routes = netlink.routes(table, family)
    except KernelError as exc:
        errors.append(f"reading {family.label} routes of table {table}: {exc}")
    try:
        rules = [r for r in netlink.rules(family) if r.table == table]
    except KernelError as exc:
        errors.append(f"reading {family.label} rules: {exc}")
    return FamilyObservation(
        family=family,
        interface=interface,
        table=table,
        link=link,
        device=device,
        addresses=tuple(addresses),
        routes=tuple(routes),
        rules=tuple(rules),
        errors=tuple(errors),
    )


@dataclass(frozen=True, slots=True)
class HostMTU:
    """The smallest MTU of the oper-up links matching MTUIfacePattern (None: no link matches)."""

    mtu: int | None
    links: tuple[str, ...] = field(default=())  # the links that have that MTU


def host_mtu(links: Iterable[Link], pattern: str, exclude: Iterable[str] = ()) -> HostMTU:
    """As Felix's MTU detection: oper-up links whose name matches `pattern`, WireGuard's excluded."""
    skip = set(exclude)
    regex = re.compile(pattern)
    found = [
        link
        for link in links
        if link.oper_up and link.name not in skip and regex.search(link.name) is not None
    ]
    if not found:
        return HostMTU(None)
    smallest = min(link.mtu for link in found)
    return HostMTU(smallest, tuple(sorted(link.name for link in found if link.mtu == smallest)))
