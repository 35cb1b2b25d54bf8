"""Decoded Calico resources, as the calculation consumes them.

Decoding and validation from etcd values lives in `meshcrypt.datastore.codecs`; values here are
already valid. Every field meshcrypt does not read stays in the raw JSON the datastore keeps, so
read-modify-write preserves it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshcrypt.model.keys import Key
from meshcrypt.model.net import CIDR, IPAddress

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class NodeResource:
    """A Calico `Node`: addresses, WireGuard tunnel addresses and published keys."""

    name: str
    ipv4_address: ipaddress.IPv4Interface | None = None  # spec.bgp.ipv4Address (CIDR form)
    ipv6_address: ipaddress.IPv6Interface | None = None  # spec.bgp.ipv6Address
    addresses: tuple[IPAddress, ...] = ()  # spec.addresses[].address
    wireguard_ipv4: ipaddress.IPv4Address | None = None  # spec.wireguard.interfaceIPv4Address
    wireguard_ipv6: ipaddress.IPv6Address | None = None  # spec.wireguard.interfaceIPv6Address
    public_key: Key | None = None  # status.wireguardPublicKey; None = empty or absent
    public_key_v6: Key | None = None  # status.wireguardPublicKeyV6


@dataclass(frozen=True, slots=True)
class IPPoolResource:
    name: str
    cidr: CIDR
    block_size: int
    disabled: bool = False
    allowed_uses: tuple[str, ...] = ("Workload", "Tunnel")
    node_selector: str = "all()"


@dataclass(frozen=True, slots=True)
class IPAMBlockResource:
    """An IPAM block; `node` is the affine node (from `affinity: host:<node>`), if any."""

    cidr: CIDR
    node: str | None
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class WorkloadEndpointResource:
    """A workload endpoint: its node and its /32 or /128 addresses."""

    key: str  # "<namespace>/<name>"
    node: str
    ip_networks: tuple[CIDR, ...] = ()
