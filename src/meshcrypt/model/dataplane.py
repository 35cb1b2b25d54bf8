"""Kernel-state values: links, WireGuard devices and peers, routes and rules.

Each value is keyed the way the kernel keys it: routes by (table, dst, metric), rules by their full
match, peers by public key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import CIDR, IPAddress, IPFamily


@dataclass(frozen=True, slots=True)
class Link:
    """A network interface as netlink reports it."""

    name: str
    index: int
    kind: str
    mtu: int
    admin_up: bool
    oper_up: bool = False


class Endpoint(NamedTuple):
    """A UDP endpoint of a WireGuard peer."""

    ip: IPAddress
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer as read back from a WireGuard device."""

    public_key: Key
    endpoint: Endpoint | None = None
    allowed_ips: frozenset[CIDR] = frozenset()
    persistent_keepalive: int = 0
    last_handshake: float = 0.0
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Device:
    """A WireGuard device as read back from the kernel or wireguard-go."""

    name: str
    private_key: PrivateKey | None
    public_key: Key | None
    listen_port: int
    fwmark: int
    peers: dict[Key, Peer] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One peer change inside a device configuration call."""

    public_key: Key
    remove: bool = False
    update_only: bool = False
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: tuple[CIDR, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """A device configuration call: device settings plus many peer changes (each peer at most once)."""

    private_key: PrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: tuple[PeerConfig, ...] = ()

    @property
    def is_empty(self) -> bool:
        return (
            self.private_key is None
            and self.listen_port is None
            and self.fwmark is None
            and not self.replace_peers
            and not self.peers
        )


class RouteKind(enum.Enum):
    """The two kinds of route meshcrypt puts in its table."""

    DEVICE = "device"  # unicast via the WireGuard device, scope link
    THROW = "throw"  # fall back to the next rule (main table)


class RouteKey(NamedTuple):
    """How the kernel identifies a route."""

    table: int
    dst: CIDR
    metric: int


@dataclass(frozen=True, slots=True)
class Route:
    """A route in a policy routing table. `ifindex` is None for throw routes."""

    table: int
    dst: CIDR
    kind: RouteKind
    ifindex: int | None
    protocol: int
    metric: int

    @property
    def key(self) -> RouteKey:
        return RouteKey(self.table, self.dst, self.metric)

    @property
    def family(self) -> IPFamily:
        return IPFamily(self.dst.version)


@dataclass(frozen=True, slots=True)
class Rule:
    """A routing policy rule: `[not] from all fwmark <mark>/<mask> lookup <table>` at a priority."""

    family: IPFamily
    priority: int
    table: int
    mark: int
    mask: int
    invert: bool

    def __str__(self) -> str:
        neg = "not " if self.invert else ""
        return (
            f"{self.priority}: {neg}from all fwmark {self.mark:#x}/{self.mask:#x} "
            f"lookup {self.table} ({self.family.label})"
        )


@dataclass(frozen=True, slots=True)
class InterfaceAddress:
    """An address assigned to an interface."""

    address: IPAddress
    prefixlen: int
