"""What one Node resource says about its host: addresses, host metadata, WireGuard endpoints.

Pure functions of a single `NodeResource`; the calculator calls them for the nodes that changed.

The node's address of a family is its BGP address (`spec.bgp.ipv4Address` / `ipv6Address`, kept with
its prefix length) or, failing that, the first `spec.addresses[]` entry of that family, as a host-length
interface. Felix prefers an `InternalIP` entry to an `ExternalIP` one; the model keeps `addresses`
without their types, so the datastore decoder is expected to list them in that order of preference.
"""

from __future__ import annotations

import ipaddress

from meshcrypt.model.messages import (
    HostMetadataUpdate,
    WireguardEndpointUpdate,
    WireguardEndpointV6Update,
)
from meshcrypt.model.net import CIDR, IPAddress, IPFamily, host_cidr
from meshcrypt.model.resources import IPInterface, NodeResource


def node_interface(node: NodeResource, version: int) -> IPInterface | None:
    """The node's address of this family with its prefix length, or None when it has none."""
    bgp: IPInterface | None = node.ipv4_address if version == IPFamily.V4 else node.ipv6_address
    if bgp is not None:
        return bgp
    for addr in node.addresses:
        if addr.version == version:
            return ipaddress.ip_interface(addr)
    return None


def node_ips(node: NodeResource | None) -> tuple[str, str]:
    """The node's plain IPv4 and IPv6 addresses as `RouteUpdate.dst_node_ip` carries them ("" for
    none)."""
    if node is None:
        return ("", "")
    v4, v6 = node_interface(node, IPFamily.V4), node_interface(node, IPFamily.V6)
    return ("" if v4 is None else str(v4.ip), "" if v6 is None else str(v6.ip))


def host_metadata(node: NodeResource) -> HostMetadataUpdate | None:
    """The HostMetadataUpdate for this node, or None when it has no address of either family."""
    v4 = node_interface(node, IPFamily.V4)
    v6 = node_interface(node, IPFamily.V6)
    if v4 is None and v6 is None:
        return None
    return HostMetadataUpdate(
        hostname=node.name,
        ipv4_addr="" if v4 is None else str(v4),
        ipv6_addr="" if v6 is None else str(v6),
    )


def endpoint_v4(node: NodeResource) -> WireguardEndpointUpdate | None:
    """The IPv4 WireGuard endpoint of a node that published an IPv4 key, else None."""
    if node.public_key is None:
        return None
    addr = "" if node.wireguard_ipv4 is None else str(node.wireguard_ipv4)
    return WireguardEndpointUpdate(node.name, node.public_key.to_base64(), addr)


def endpoint_v6(node: NodeResource) -> WireguardEndpointV6Update | None:
    """The IPv6 WireGuard endpoint of a node that published an IPv6 key, else None."""
    if node.public_key_v6 is None:
        return None
    addr = "" if node.wireguard_ipv6 is None else str(node.wireguard_ipv6)
    return WireguardEndpointV6Update(node.name, node.public_key_v6.to_base64(), addr)


def host_cidrs(node: NodeResource) -> frozenset[CIDR]:
    """Host routes of the node: its BGP addresses and every `spec.addresses[]` entry, host-length."""
    addrs: list[IPAddress] = list(node.addresses)
    if node.ipv4_address is not None:
        addrs.append(node.ipv4_address.ip)
    if node.ipv6_address is not None:
        addrs.append(node.ipv6_address.ip)
    return frozenset(map(host_cidr, addrs))


def tunnel_cidrs(node: NodeResource) -> frozenset[CIDR]:
    """Tunnel routes of the node: its WireGuard interface addresses, host-length."""
    addrs: list[IPAddress] = []
    if node.wireguard_ipv4 is not None:
        addrs.append(node.wireguard_ipv4)
    if node.wireguard_ipv6 is not None:
        addrs.append(node.wireguard_ipv6)
    return frozenset(map(host_cidr, addrs))
