"""A WireGuard manager wired to the in-memory fakes, with the reference scenarios' conventions.

Conventions (`reference-behavior.md` §5): hostname `my-host`; ports 1000 (v4) / 2000 (v6); fwmark 10;
rule priority 98; table 99; interfaces `wireguard-if` / `wireguard-if-v6`; MTU 2000; host encryption on;
route protocol 3. IPv6 values are the IPv4 ones embedded in the low 32 bits of 2001:db8::/96, so a /32
becomes a /128 and a /24 a /120.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator

from meshcrypt.fakes import FakeKernel
from meshcrypt.model.config import WireguardFamilyConfig
from meshcrypt.model.dataplane import (
    Device,
    DeviceConfig,
    Endpoint,
    Peer,
    Route,
    RouteKind,
    Rule,
)
from meshcrypt.model.errors import WaitingForLink
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import CIDR, IPAddress, IPFamily
from meshcrypt.ports import WireguardDevices
from meshcrypt.wireguard.manager import WireguardManager

HOST = "my-host"
TABLE = 99
FWMARK = 10
RULE_PRIORITY = 98
MTU = 2000
PORTS = {IPFamily.V4: 1000, IPFamily.V6: 2000}
IFACES = {IPFamily.V4: "wireguard-if", IPFamily.V6: "wireguard-if-v6"}
V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))


def make_config(family: IPFamily, **changes: object) -> WireguardFamilyConfig:
    config = WireguardFamilyConfig(
        family=family,
        enabled=True,
        interface_name=IFACES[family],
        listening_port=PORTS[family],
        mtu=MTU,
        routing_table=TABLE,
        rule_priority=RULE_PRIORITY,
        firewall_mark=FWMARK,
        host_encryption=True,
        persistent_keepalive=0,
        threading=False,
        route_protocol=3,
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def key() -> Key:
    return PrivateKey.generate().public_key()


class RecordingWireguard:
    """Wraps a fake WireGuard client and records every configure call."""

    def __init__(self, inner: WireguardDevices, log: list[DeviceConfig]) -> None:
        self._inner = inner
        self._log = log

    def device(self, name: str) -> Device:
        return self._inner.device(name)

    def configure(self, name: str, config: DeviceConfig) -> None:
        self._inner.configure(name, config)
        self._log.append(config)

    def close(self) -> None:
        self._inner.close()


class Harness:
    """One family's manager on a fake kernel (several harnesses may share one kernel)."""

    def __init__(
        self,
        family: IPFamily,
        kernel: FakeKernel | None = None,
        **config_changes: object,
    ) -> None:
        self.family = family
        self.kernel = kernel if kernel is not None else FakeKernel()
        self.config = make_config(family, **config_changes)
        self.published: list[Key] = []
        self.publish_error: Exception | None = None
        self.configure_log: list[DeviceConfig] = []
        factory = self.kernel.wireguard_factory()
        self.manager = WireguardManager(
            HOST,
            self.config,
            netlink=self.kernel.netlink_factory(),
            wireguard=lambda: RecordingWireguard(factory(), self.configure_log),
            sysfs=self.kernel.sysfs,
            status_callback=self._publish,
        )

    def _publish(self, published: Key) -> None:
        if self.publish_error is not None:
            raise self.publish_error
        self.published.append(published)

    # -- values in this family ----------------------------------------------------------------

    def ip(self, v4: str) -> IPAddress:
        addr = ipaddress.IPv4Address(v4)
        if self.family is IPFamily.V4:
            return addr
        return ipaddress.IPv6Address(V6_BASE + int(addr))

    def cidr(self, v4: str) -> CIDR:
        net = ipaddress.IPv4Network(v4)
        if self.family is IPFamily.V4:
            return net
        base = ipaddress.IPv6Address(V6_BASE + int(net.network_address))
        return ipaddress.IPv6Network(f"{base}/{96 + net.prefixlen}")

    def endpoint(self, v4: str) -> Endpoint:
        return Endpoint(self.ip(v4), PORTS[self.family])

    # -- driving ------------------------------------------------------------------------------

    @property
    def iface(self) -> str:
        return self.config.interface_name

    def apply_until_not_waiting(self, limit: int = 5) -> None:
        for _ in range(limit):
            try:
                self.manager.apply()
            except WaitingForLink:
                if self.kernel.has_link(self.iface) and self.kernel.up_requested(self.iface):
                    self.link_up()
                continue
            return
        raise AssertionError("apply kept waiting for the link")

    def link_up(self) -> None:
        """The link comes up and the interface monitor reports it."""
        self.kernel.set_link_up(self.iface)
        link = self.kernel.link(self.iface)
        self.manager.on_iface_state_changed(self.iface, link.index, True)

    def start(self) -> None:
        """First apply, link up, second apply: a running, keyed device."""
        try:
            self.manager.apply()
        except WaitingForLink:
            pass
        self.link_up()
        self.manager.apply()

    def peer(self, name: str, v4_endpoint: str, peer_key: Key, *cidrs: str) -> None:
        self.manager.endpoint_update(name, self.ip(v4_endpoint))
        self.manager.endpoint_wireguard_update(name, peer_key, None)
        for c in cidrs:
            self.manager.route_update(name, self.cidr(c))

    # -- reading back -------------------------------------------------------------------------

    def device(self) -> Device:
        return self.kernel.device(self.iface)

    def peers(self) -> dict[Key, Peer]:
        return self.device().peers

    def allowed(self, peer_key: Key) -> set[CIDR]:
        return set(self.peers()[peer_key].allowed_ips)

    def routes(self) -> dict[CIDR, Route]:
        return {r.dst: r for r in self.kernel.routes_in(TABLE, self.family)}

    def route_kinds(self) -> dict[CIDR, RouteKind]:
        return {dst: r.kind for dst, r in self.routes().items()}

    def our_rules(self) -> list[Rule]:
        return [r for r in self.kernel.rules_of(self.family) if r.table == TABLE]

    def expected_rule(self) -> Rule:
        return Rule(self.family, RULE_PRIORITY, TABLE, FWMARK, FWMARK, invert=True)

    def addresses(self) -> list[IPAddress]:
        return [a.address for a in self.kernel.addresses_of(self.iface, self.family)]


def families() -> Iterator[IPFamily]:
    yield from IPFamily
