"""Two nodes, each with a wireguard-go device programmed only through meshcrypt's manager + adapters.

Checks real outcomes: ping between the device addresses, a capture on the underlay veth that shows only
WireGuard UDP for that traffic, `wg show` (in the node's mount namespace) with the expected peers and
allowed IPs, the routing table and rule read back with `ip`, and 300 extra peers read back in full.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshcrypt.adapters.backend import BackendMode
from tests.integration.conftest import NodeFactory
from tests.integration.mesh import (
    IFACE,
    PORT,
    classify,
    exchange,
    make_mesh,
    start_capture,
    stop_capture,
)

pytestmark = pytest.mark.integration


def test_two_node_userspace_mesh(node: NodeFactory, tmp_path: Path) -> None:
    a, b = make_mesh([node("a"), node("b")], BackendMode.USERSPACE, tmp_path)
    try:
        for n in (a, b):
            n.apply()
            assert n.published and not n.key.is_zero
        fake = exchange([a, b], extra_peers=300)
        for n in (a, b):
            n.apply()

        pcap = tmp_path / "a.pcap"
        capture = start_capture(a, pcap)
        ping = a.sim.run("ping", "-c", "5", "-i", "0.2", "-W", "2", b.tunnel)
        lines = stop_capture(capture, pcap)
        assert " 0% packet loss" in ping
        counts = classify(lines)
        assert counts["plaintext"] == 0, lines
        assert counts["wireguard"] >= 10, lines
        assert counts["other"] == 0, lines

        dump = a.wg_dump()
        device, peers = dump[0], {row[0]: row for row in dump[1:]}
        assert device[2] == str(PORT)
        assert device[1] == a.key.to_base64()
        assert len(peers) == 301
        peer_b = peers[b.key.to_base64()]
        assert peer_b[2] == f"{b.underlay}:{PORT}"
        assert set(peer_b[3].split(",")) == {b.block, f"{b.tunnel}/32"}
        for k, cidr in fake.items():
            assert peers[k.to_base64()][3] == cidr

        routes = json.loads(a.sim.run("ip", "-j", "route", "show", "table", "1"))
        by_dst = {r["dst"]: r for r in routes}
        assert by_dst["10.65.1.0/26"]["dev"] == IFACE
        assert by_dst["10.65.1.1"]["dev"] == IFACE
        assert by_dst["10.65.0.0/26"]["type"] == "throw"
        assert len([r for r in routes if r.get("dev") == IFACE]) == 2 + 300
        rules = a.sim.run("ip", "rule", "show", "pref", "99")
        assert "not from all fwmark 0x100000/0x100000 lookup 1" in rules
        link = json.loads(a.sim.run("ip", "-j", "link", "show", IFACE))[0]
        assert link["mtu"] == 1400
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
