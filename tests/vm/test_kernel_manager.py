"""The manager-level two-node mesh on the kernel WireGuard backend (runs inside the VM).

The same scenario as tests/integration/test_manager_userspace.py — programmed only through meshcrypt's
manager and adapters, checked with ping, a capture, `wg show`, `ip route`/`ip rule` — with 300 extra
peers so the kernel's multi-part dumps and split SET_DEVICE messages are exercised.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshcrypt.adapters.backend import BackendMode, select_backend
from meshcrypt.adapters.nodens import SimNode
from tests.integration.mesh import IFACE, check_two_node_mesh, make_mesh

pytestmark = pytest.mark.vm


def test_two_node_kernel_mesh(vm_kernel: None, tmp_path: Path) -> None:
    sims = [SimNode.create(n, netns=f"mck{os.getpid()}-{n}") for n in ("a", "b")]
    try:
        a, b = make_mesh(sims, BackendMode.KERNEL, tmp_path)
        assert a.backend.name == "kernel"
        check_two_node_mesh(a, b, tmp_path, extra_peers=300)
        link = a.sim.run("ip", "-d", "link", "show", IFACE)
        assert "wireguard" in link
    finally:
        for sim in reversed(sims):
            sim.destroy()


def test_auto_backend_picks_the_kernel(vm_kernel: None) -> None:
    sim = SimNode.create("auto", netns=f"mck{os.getpid()}-auto")
    try:
        backend = select_backend(BackendMode.AUTO, interfaces=[IFACE], netns=sim.netns)
        assert backend.name == "kernel"
        assert "mcprobe" not in sim.run("ip", "link", "show")  # the probe link is gone
    finally:
        sim.destroy()
