"""Test helpers: resource builders and the "state from messages" model a consumer would keep."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from meshcrypt.model.keys import Key
from meshcrypt.model.messages import (
    DataplaneMessage,
    HostMetadataRemove,
    HostMetadataUpdate,
    RouteRemove,
    RouteUpdate,
    WireguardEndpointRemove,
    WireguardEndpointUpdate,
    WireguardEndpointV6Remove,
    WireguardEndpointV6Update,
)
from meshcrypt.model.resources import (
    IPAMBlockResource,
    IPPoolResource,
    NodeResource,
    WorkloadEndpointResource,
)

LOCAL = "local-host"


def key(n: int) -> Key:
    return Key(bytes([n]) * 32)


def node(
    name: str,
    v4: str | None = None,
    v6: str | None = None,
    *,
    addresses: tuple[str, ...] = (),
    wg4: str | None = None,
    wg6: str | None = None,
    key4: Key | None = None,
    key6: Key | None = None,
) -> NodeResource:
    return NodeResource(
        name=name,
        ipv4_address=None if v4 is None else ipaddress.IPv4Interface(v4),
        ipv6_address=None if v6 is None else ipaddress.IPv6Interface(v6),
        addresses=tuple(ipaddress.ip_address(a) for a in addresses),
        wireguard_ipv4=None if wg4 is None else ipaddress.IPv4Address(wg4),
        wireguard_ipv6=None if wg6 is None else ipaddress.IPv6Address(wg6),
        public_key=key4,
        public_key_v6=key6,
    )


@dataclass
class Replayed:
    """What a consumer knows after applying every message in order.

    `apply` also checks the stream is minimal: an update must change something, a removal must
    remove something, and one flush mentions each host (per message family) or CIDR at most once.
    """

    hosts: dict[str, HostMetadataUpdate] = field(default_factory=dict)
    v4: dict[str, WireguardEndpointUpdate] = field(default_factory=dict)
    v6: dict[str, WireguardEndpointV6Update] = field(default_factory=dict)
    routes: dict[str, RouteUpdate] = field(default_factory=dict)

    def apply(self, messages: list[DataplaneMessage]) -> None:
        seen: set[tuple[str, str]] = set()
        for msg in messages:
            table, ident = self._slot(msg)
            assert (table, ident) not in seen, f"{msg} mentioned twice in one flush"
            seen.add((table, ident))
            store: dict[str, object] = getattr(self, table)
            match msg:
                case HostMetadataRemove() | WireguardEndpointRemove() | WireguardEndpointV6Remove():
                    assert ident in store, f"{msg} removes something never sent"
                    del store[ident]
                case RouteRemove():
                    assert ident in store, f"{msg} removes something never sent"
                    del store[ident]
                case _:
                    assert store.get(ident) != msg, f"{msg} repeats what was sent"
                    store[ident] = msg

    @staticmethod
    def _slot(msg: DataplaneMessage) -> tuple[str, str]:
        match msg:
            case HostMetadataUpdate() | HostMetadataRemove():
                return "hosts", msg.hostname
            case WireguardEndpointUpdate() | WireguardEndpointRemove():
                return "v4", msg.hostname
            case WireguardEndpointV6Update() | WireguardEndpointV6Remove():
                return "v6", msg.hostname
            case RouteUpdate() | RouteRemove():
                return "routes", msg.dst
        raise AssertionError(f"unexpected message {msg!r}")


def block(cidr: str, affine: str | None, *, deleted: bool = False) -> IPAMBlockResource:
    return IPAMBlockResource(ipaddress.ip_network(cidr), affine, deleted)


def wep(key_: str, on: str, *ips: str) -> WorkloadEndpointResource:
    return WorkloadEndpointResource(key_, on, tuple(ipaddress.ip_network(ip) for ip in ips))


def pool(name: str, cidr: str) -> IPPoolResource:
    net = ipaddress.ip_network(cidr)
    return IPPoolResource(name, net, 26 if net.version == 4 else 122)
