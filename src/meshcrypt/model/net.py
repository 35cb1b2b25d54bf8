"""IP families, addresses and CIDRs, parametrised by family so v4 and v6 share one code path."""

from __future__ import annotations

import enum
import ipaddress
import socket
from typing import NewType, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
CIDR: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

NodeName = NewType("NodeName", str)


class IPFamily(enum.IntEnum):
    """An IP version. The value is the version number (4 or 6)."""

    V4 = 4
    V6 = 6

    @property
    def host_prefixlen(self) -> int:
        return 32 if self is IPFamily.V4 else 128

    @property
    def af(self) -> int:
        """The socket address family (AF_INET / AF_INET6)."""
        return socket.AF_INET if self is IPFamily.V4 else socket.AF_INET6

    @property
    def default_route_metric(self) -> int:
        """Kernel default metric: 0 for IPv4, 1024 for IPv6 routes."""
        return 0 if self is IPFamily.V4 else 1024

    @property
    def label(self) -> str:
        return "IPv4" if self is IPFamily.V4 else "IPv6"

    @classmethod
    def of(cls, value: IPAddress | CIDR) -> IPFamily:
        return cls(value.version)


def parse_cidr(text: str) -> CIDR:
    """Parse a CIDR; host bits must be zero except for host-length prefixes of a bare IP."""
    return ipaddress.ip_network(text.strip(), strict=True)


def parse_ip_or_cidr_address(text: str) -> IPAddress:
    """Parse "10.0.0.2" or "10.0.0.2/24" into the address (the mask is dropped)."""
    text = text.strip()
    if "/" in text:
        return ipaddress.ip_interface(text).ip
    return ipaddress.ip_address(text)


def host_cidr(addr: IPAddress) -> CIDR:
    """The /32 or /128 network of one address."""
    return ipaddress.ip_network(addr)


def is_host_cidr(cidr: CIDR) -> bool:
    return cidr.prefixlen == cidr.max_prefixlen
