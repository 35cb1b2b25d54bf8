"""Two nodes, each with a wireguard-go device programmed only through meshcrypt's manager + adapters.

Checks real outcomes: ping between the device addresses, a capture on the underlay veth that shows only
WireGuard UDP for that traffic, `wg show` (in the node's mount namespace) with the expected peers and
allowed IPs, the routing table and rule read back with `ip`, and 300 extra peers read back in full.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcrypt.adapters.backend import BackendMode
from tests.integration.conftest import NodeFactory
from tests.integration.mesh import (
    IFACE,
    check_two_node_mesh,
    make_mesh,
)

pytestmark = pytest.mark.integration


def test_two_node_userspace_mesh(node: NodeFactory, tmp_path: Path) -> None:
    a, b = make_mesh([node("a"), node("b")], BackendMode.USERSPACE, tmp_path)
    try:
        check_two_node_mesh(a, b, tmp_path, extra_peers=300)
    finally:
        for n in (a, b):
            if n.supervisor is not None:
                n.supervisor.stop(IFACE)


def test_disable_removes_everything(node: NodeFactory, tmp_path: Path) -> None:
    import dataclasses

    from meshcrypt.adapters.sysfs import FileSysfs
    from meshcrypt.wireguard.manager import WireguardManager

    a, b = make_mesh([node("a"), node("b")], BackendMode.USERSPACE, tmp_path)
    try:
        a.apply()
        assert a.sim.run("ip", "rule", "show", "pref", "99").strip()
        disabled = WireguardManager(
            a.name,
            dataclasses.replace(a.manager.config, enabled=False),
            netlink=a.backend.netlink,
            wireguard=a.backend.wireguard,
            sysfs=FileSysfs(a.sim.netns),
            status_callback=a.published.append,
            link_kind=a.backend.link_kind,
        )
        disabled.apply()
        assert a.published[-1].is_zero
        assert IFACE not in a.sim.run("ip", "link", "show")
        assert a.sim.run("ip", "rule", "show", "pref", "99").strip() == ""
        # Every route gone: the kernel drops the empty table ("FIB table does not exist").
        assert a.sim.run("ip", "route", "show", "table", "1", check=False).strip() == ""
        assert a.supervisor is not None and not a.supervisor.is_alive(IFACE)
    finally:
        for n in (a, b):
            if n.supervisor is not None:
                n.supervisor.stop(IFACE)
