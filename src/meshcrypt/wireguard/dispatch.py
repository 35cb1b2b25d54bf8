"""Turns dataplane messages into manager calls, per IP family (`reference-behavior.md` §1.3).

Bad input (an unparsable address or key, a CIDR of the wrong family) is logged and ignored; it never
raises. Two deliberate differences from Felix, both for the operator's benefit:

* a RouteUpdate whose only type is REMOTE_HOST, when host encryption is off, *removes* the CIDR instead
  of being ignored, so a CIDR that turns into a host address does not keep its old mapping;
* a HostMetadataUpdate without an address of this family removes the node's endpoint for this family
  instead of being ignored, so a node that loses its address stops being a peer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from meshcrypt.model.keys import Key, KeyFormatError
from meshcrypt.model.messages import (
    DataplaneMessage,
    HostMetadataRemove,
    HostMetadataUpdate,
    RouteRemove,
    RouteType,
    RouteUpdate,
    WireguardEndpointRemove,
    WireguardEndpointUpdate,
    WireguardEndpointV6Remove,
    WireguardEndpointV6Update,
)
from meshcrypt.model.net import CIDR, IPAddress, IPFamily, parse_cidr, parse_ip_or_cidr_address
from meshcrypt.wireguard.manager import WireguardManager
from meshcrypt.wireguard.node_state import ZERO_KEY

log = logging.getLogger(__name__)

WORKLOAD = RouteType.LOCAL_WORKLOAD | RouteType.REMOTE_WORKLOAD
TUNNEL = RouteType.LOCAL_TUNNEL | RouteType.REMOTE_TUNNEL


class ManagerDispatch:
    """Feeds one family's manager from the stream of dataplane messages."""

    def __init__(self, manager: WireguardManager) -> None:
        self.manager = manager
        self.family = manager.family

    def on_update(self, msg: DataplaneMessage) -> None:
        match msg:
            case HostMetadataUpdate():
                self._host_metadata(msg)
            case HostMetadataRemove():
                self.manager.endpoint_remove(msg.hostname)
            case RouteUpdate():
                self._route_update(msg)
            case RouteRemove():
                cidr = self._cidr(msg.dst)
                if cidr is not None:
                    self.manager.route_remove(cidr)
            case WireguardEndpointUpdate() if self.family is IPFamily.V4:
                self._endpoint_wireguard(msg.hostname, msg.public_key, msg.interface_ipv4_addr)
            case WireguardEndpointV6Update() if self.family is IPFamily.V6:
                self._endpoint_wireguard(msg.hostname, msg.public_key_v6, msg.interface_ipv6_addr)
            case WireguardEndpointRemove() if self.family is IPFamily.V4:
                self.manager.endpoint_wireguard_remove(msg.hostname)
            case WireguardEndpointV6Remove() if self.family is IPFamily.V6:
                self.manager.endpoint_wireguard_remove(msg.hostname)
            case _:
                pass

    def _host_metadata(self, msg: HostMetadataUpdate) -> None:
        text = msg.ipv4_addr if self.family is IPFamily.V4 else msg.ipv6_addr
        if not text:
            self.manager.endpoint_remove(msg.hostname)
            return
        addr = self._address(text, f"host {msg.hostname}")
        if addr is not None:
            self.manager.endpoint_update(msg.hostname, addr)

    def _route_update(self, msg: RouteUpdate) -> None:
        cidr = self._cidr(msg.dst)
        if cidr is None:
            return
        host_route = bool(msg.types & RouteType.REMOTE_HOST) and self.manager.config.host_encryption
        if host_route or msg.types & (WORKLOAD | TUNNEL):
            self.manager.route_update(msg.dst_node_name, cidr, host=host_route)
        else:
            self.manager.route_remove(cidr)

    def _endpoint_wireguard(self, hostname: str, key_text: str, addr_text: str) -> None:
        try:
            key = Key.from_base64(key_text) if key_text else ZERO_KEY
        except KeyFormatError as exc:
            log.warning(
                "Invalid WireGuard public key of %s (%s); treating it as none", hostname, exc
            )
            key = ZERO_KEY
        addr = self._address(addr_text, f"WireGuard address of {hostname}") if addr_text else None
        self.manager.endpoint_wireguard_update(hostname, key, addr)

    def _cidr(self, text: str) -> CIDR | None:
        if (":" in text) != (self.family is IPFamily.V6):
            return None  # the other family's dispatcher parses it (and reports it if it is bad)
        try:
            cidr = parse_cidr(text)
        except ValueError as exc:
            log.warning("Ignoring route with an invalid destination %r: %s", text, exc)
            return None
        return cidr if cidr.version == self.family else None

    def _address(self, text: str, what: str) -> IPAddress | None:
        try:
            addr = parse_ip_or_cidr_address(text)
        except ValueError as exc:
            log.warning("Ignoring invalid %s %r: %s", what, text, exc)
            return None
        if addr.version != self.family:
            log.warning("Ignoring %s %r: not %s", what, text, self.family.label)
            return None
        return addr


def dispatch_all(dispatchers: Iterable[ManagerDispatch], msg: DataplaneMessage) -> None:
    """Deliver one message to every family's dispatcher."""
    for dispatcher in dispatchers:
        dispatcher.on_update(msg)
