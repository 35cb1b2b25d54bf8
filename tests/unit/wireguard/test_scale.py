"""Scale: one manager facing 10,000 peers. A delta apply costs what changed, not the cluster.

Bounds are loose (a busy 2-core CI machine must pass): they catch a change in complexity — a walk
over every node or route per apply costs tens of milliseconds here — not a few percent.
"""

from __future__ import annotations

import ipaddress
import statistics
import time
from collections.abc import Callable

from meshcrypt.fakes import FakeKernel
from meshcrypt.model.dataplane import Device, DeviceConfig
from meshcrypt.model.keys import PrivateKey
from meshcrypt.model.net import IPFamily
from meshcrypt.wireguard.manager import WireguardManager
from tests.unit.wireguard.harness import HOST, TABLE, key, make_config

N = 10_000
ENDPOINTS = int(ipaddress.IPv4Address("11.0.0.0"))
BLOCKS = int(ipaddress.IPv4Address("10.64.0.0"))


class SettingsOnlyDevice:
    """A WireGuard client that keeps no peers: the test times the manager, not a fake device that
    copies its whole peer table at every call."""

    def __init__(self) -> None:
        self.private = PrivateKey.generate()
        self.configured = 0

    def device(self, name: str) -> Device:
        return Device(name, self.private, self.private.public_key(), 1000, 10)

    def configure(self, name: str, config: DeviceConfig) -> None:
        self.configured += 1

    def close(self) -> None:
        pass


def block(i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((BLOCKS + 64 * i, 26))


def test_delta_apply_cost_does_not_grow_with_the_cluster() -> None:
    kernel = FakeKernel(immediate_link_up=True)
    device = SettingsOnlyDevice()
    manager = WireguardManager(
        HOST,
        make_config(IPFamily.V4),
        netlink=kernel.netlink_factory(),
        wireguard=lambda: device,
        sysfs=kernel.sysfs,
        status_callback=lambda _key: None,
    )
    for i in range(N):
        manager.endpoint_update(f"n{i}", ipaddress.IPv4Address(ENDPOINTS + i))
        manager.endpoint_wireguard_update(f"n{i}", key(), None)
        manager.route_update(f"n{i}", block(i))
    manager.apply()
    assert manager.programmed_peers == N
    assert len(kernel.routes_in(TABLE, IPFamily.V4)) == N

    def timed(change: Callable[[int], None]) -> float:
        samples = []
        for r in range(15):
            change(r)
            start = time.perf_counter()
            manager.apply()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    def new_key(r: int) -> None:
        manager.endpoint_wireguard_update(f"n{r}", key(), None)

    def new_endpoint(r: int) -> None:
        manager.endpoint_update(f"n{r}", ipaddress.IPv4Address(ENDPOINTS + N + r))

    def moved_block(r: int) -> None:
        manager.route_update(f"n{r + 1}", block(r))

    configured = device.configured
    for change in (new_key, new_endpoint, moved_block):
        median = timed(change)
        assert median < 0.005, f"{change.__name__}: {median * 1e3:.2f} ms per apply at {N} nodes"
    assert device.configured > configured
    assert manager.programmed_peers == N
