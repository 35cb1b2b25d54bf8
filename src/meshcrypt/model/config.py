"""Felix configuration values that shape WireGuard (`reference-behavior.md` §3).

`FelixConfig` holds every parameter with Calico's defaults. `WireguardFamilyConfig` is the
per-family view one WireGuard manager works from. Parsing (environment, FelixConfiguration
resources) lives in `meshcrypt.model.config_parse`.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcrypt.model.net import IPFamily

DEFAULT_MTU_IFACE_PATTERN = r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)"
# Felix reserves the lowest bits of the mark mask for its own iptables marks (accept, pass,
# scratch0, scratch1); WireGuard takes the next free bit. With the default mask 0xffff0000 that is
# 0x100000.
MARK_BITS_RESERVED_BEFORE_WIREGUARD = 4


@dataclass(frozen=True, slots=True)
class WireguardFamilyConfig:
    """What one per-family WireGuard manager needs to know."""

    family: IPFamily
    enabled: bool
    interface_name: str
    listening_port: int
    mtu: int  # 0 = leave the MTU alone (auto-detection resolves it before it reaches the manager)
    routing_table: int
    rule_priority: int
    firewall_mark: int
    host_encryption: bool
    persistent_keepalive: int  # seconds, 0 = off
    threading: bool
    route_protocol: int
    route_sync_disabled: bool = False


@dataclass(frozen=True, slots=True)
class FelixConfig:
    """Every Felix parameter meshcrypt reads, with Calico's defaults."""

    wireguard_enabled: bool = False
    wireguard_enabled_v6: bool = False
    wireguard_listening_port: int = 51820
    wireguard_listening_port_v6: int = 51821
    wireguard_routing_rule_priority: int = 99
    wireguard_interface_name: str = "wireguard.cali"
    wireguard_interface_name_v6: str = "wg-v6.cali"
    wireguard_mtu: int = 0
    wireguard_mtu_v6: int = 0
    wireguard_host_encryption_enabled: bool = False
    wireguard_persistent_keepalive: float = 0.0  # seconds
    wireguard_threading_enabled: bool = False
    prometheus_wireguard_metrics_enabled: bool = True
    prometheus_metrics_enabled: bool = False
    prometheus_metrics_port: int = 9091
    health_enabled: bool = True
    health_port: int = 9099
    route_table_ranges: tuple[tuple[int, int], ...] = ((1, 250),)
    iptables_mark_mask: int = 0xFFFF0000
    mtu_iface_pattern: str = DEFAULT_MTU_IFACE_PATTERN
    device_route_protocol: int = 3
    route_refresh_interval: float = 90.0
    netlink_timeout: float = 10.0
    route_sync_disabled: bool = False
    route_source: str = "CalicoIPAM"
    ipv6_support: bool = True

    @property
    def routing_table_index(self) -> int:
        """The WireGuard routing table: the first index of the first RouteTableRanges range."""
        return self.route_table_ranges[0][0]

    @property
    def wireguard_mark(self) -> int:
        """The WireGuard firewall mark: the fifth lowest set bit of IptablesMarkMask."""
        bits = [1 << i for i in range(32) if self.iptables_mark_mask & (1 << i)]
        return bits[MARK_BITS_RESERVED_BEFORE_WIREGUARD]

    def for_family(self, family: IPFamily, mtu: int | None = None) -> WireguardFamilyConfig:
        """The manager's view of one family; `mtu` overrides the configured MTU (auto-detection)."""
        v4 = family is IPFamily.V4
        return WireguardFamilyConfig(
            family=family,
            enabled=self.wireguard_enabled if v4 else self.wireguard_enabled_v6,
            interface_name=(
                self.wireguard_interface_name if v4 else self.wireguard_interface_name_v6
            ),
            listening_port=(
                self.wireguard_listening_port if v4 else self.wireguard_listening_port_v6
            ),
            mtu=mtu if mtu is not None else (self.wireguard_mtu if v4 else self.wireguard_mtu_v6),
            routing_table=self.routing_table_index,
            rule_priority=self.wireguard_routing_rule_priority,
            firewall_mark=self.wireguard_mark,
            host_encryption=self.wireguard_host_encryption_enabled,
            persistent_keepalive=int(self.wireguard_persistent_keepalive),
            threading=self.wireguard_threading_enabled,
            route_protocol=self.device_route_protocol,
            route_sync_disabled=self.route_sync_disabled,
        )
