"""Fixtures for integration tests: simulated nodes and wireguard-go devices inside them.

`node` is a factory: ``n = node("a")`` makes a network namespace plus a private mount namespace held
by a holder process (see `meshcrypt.adapters.nodens`); ``n.run("wg", "show")`` runs inside it. Every
node made is destroyed at teardown (its processes killed by PID, then the netns deleted), even when the
test fails. `wireguard_go_node` is a node already running wireguard-go as ``wireguard.cali``, with a
supervisor and a UAPI client pointed at it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshcrypt.adapters.nodens import SimNode
from meshcrypt.adapters.wireguard_go import WireguardGoSupervisor
from meshcrypt.adapters.wireguard_uapi import UapiWireguardDevices

WG_IFACE = "wireguard.cali"
NodeFactory = Callable[[str], SimNode]


def _require(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network and mount namespaces)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")


@pytest.fixture
def node() -> Iterator[NodeFactory]:
    """Factory of simulated nodes, all destroyed at teardown."""
    _require("ip", "nsenter", "unshare")
    made: list[SimNode] = []

    def make(name: str) -> SimNode:
        # The test process's PID keeps parallel or leftover runs apart.
        n = SimNode.create(name, netns=f"mct{os.getpid()}-{name}")
        made.append(n)
        return n

    yield make
    for n in reversed(made):
        n.destroy()


@dataclass(eq=False)
class WireguardGoNode:
    """A node running wireguard-go for `iface`, and the adapters that drive it from the host."""

    node: SimNode
    iface: str
    supervisor: WireguardGoSupervisor
    devices: UapiWireguardDevices
    pid: int


def start_wireguard_go(sim: SimNode, state_dir: Path, iface: str = WG_IFACE) -> WireguardGoNode:
    """Start wireguard-go for `iface` inside `sim`; the caller (or node teardown) stops it."""
    sup = WireguardGoSupervisor(
        str(state_dir), socket_dir=sim.socket_dir, prefix_cmd=sim.nsenter_prefix
    )
    pid = sup.ensure_running(iface, mtu=0)
    return WireguardGoNode(sim, iface, sup, UapiWireguardDevices(sim.socket_dir, timeout=60), pid)


WireguardGoFactory = Callable[[SimNode], WireguardGoNode]


@pytest.fixture
def wireguard_go(tmp_path: Path) -> Iterator[WireguardGoFactory]:
    """Factory: ``wireguard_go(node)`` starts wireguard-go as ``wireguard.cali`` in that node.

    Each gets its own state directory; all are stopped at teardown (before their nodes go).
    """
    _require("wireguard-go", "wg")
    started: list[WireguardGoNode] = []

    def start(sim: SimNode) -> WireguardGoNode:
        wg = start_wireguard_go(sim, tmp_path / f"state-{sim.name}")
        started.append(wg)
        return wg

    yield start
    for wg in reversed(started):
        wg.devices.close()
        wg.supervisor.stop(wg.iface)


@pytest.fixture
def wireguard_go_node(node: NodeFactory, wireguard_go: WireguardGoFactory) -> WireguardGoNode:
    """One node running wireguard-go as ``wireguard.cali``."""
    return wireguard_go(node("wg"))
