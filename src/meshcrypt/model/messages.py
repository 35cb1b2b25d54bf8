"""Dataplane messages: what the calculation sends to the WireGuard managers.

They mirror Felix's protobuf messages (`reference-behavior.md` §1.2). Addresses and keys are kept as the
strings the calculation produced; the managers parse and validate them (bad input is logged and ignored).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RouteType(enum.IntFlag):
    """Bitmap of route types, with Felix's bit values."""

    CIDR_INFO = 0
    REMOTE_WORKLOAD = 1
    REMOTE_HOST = 2
    LOCAL_WORKLOAD = 4
    LOCAL_HOST = 8
    REMOTE_TUNNEL = 16
    LOCAL_TUNNEL = 32


@dataclass(frozen=True, slots=True)
class HostMetadataUpdate:
    hostname: str
    ipv4_addr: str = ""  # "IP/prefixlen" or ""
    ipv6_addr: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HostMetadataRemove:
    hostname: str


@dataclass(frozen=True, slots=True)
class RouteUpdate:
    dst: str
    types: RouteType
    dst_node_name: str = ""
    dst_node_ip: str = ""
    borrowed: bool = False
    tunnel_wireguard: bool = False


@dataclass(frozen=True, slots=True)
class RouteRemove:
    dst: str


@dataclass(frozen=True, slots=True)
class WireguardEndpointUpdate:
    hostname: str
    public_key: str
    interface_ipv4_addr: str = ""


@dataclass(frozen=True, slots=True)
class WireguardEndpointRemove:
    hostname: str


@dataclass(frozen=True, slots=True)
class WireguardEndpointV6Update:
    hostname: str
    public_key_v6: str
    interface_ipv6_addr: str = ""


@dataclass(frozen=True, slots=True)
class WireguardEndpointV6Remove:
    hostname: str


DataplaneMessage = (
    HostMetadataUpdate
    | HostMetadataRemove
    | RouteUpdate
    | RouteRemove
    | WireguardEndpointUpdate
    | WireguardEndpointRemove
    | WireguardEndpointV6Update
    | WireguardEndpointV6Remove
)
