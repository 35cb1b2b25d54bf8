"""A small WireGuard mesh of simulated nodes, programmed only through meshcrypt's manager + adapters.

Used by the userspace integration test here and by the kernel-backend test inside a virtme-ng VM, so
both backends are checked by the same scenario.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshcrypt.adapters.backend import Backend, BackendMode, select_backend
from meshcrypt.adapters.nodens import SimNode, veth_pair
from meshcrypt.adapters.sysfs import FileSysfs
from meshcrypt.adapters.wireguard_go import WireguardGoSupervisor
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.errors import RetryableError
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import IPFamily
from meshcrypt.wireguard.manager import WireguardManager

IFACE = "wireguard.cali"
PORT = 51820


@dataclass(eq=False)
class MeshNode:
    name: str
    sim: SimNode
    underlay: str  # e.g. 10.99.0.1
    tunnel: str  # e.g. 10.65.0.1
    block: str  # e.g. 10.65.0.0/26
    backend: Backend
    manager: WireguardManager
    supervisor: WireguardGoSupervisor | None
    published: list[Key] = field(default_factory=list)

    @property
    def key(self) -> Key:
        return self.published[-1]

    def apply(self, attempts: int = 20) -> None:
        """Apply until it succeeds (the link may take a moment to come up)."""
        last: Exception | None = None
        for _ in range(attempts):
            try:
                self.manager.apply()
                return
            except RetryableError as exc:
                last = exc
                time.sleep(0.1)
        raise AssertionError(f"{self.name}: apply never succeeded: {last}")

    def wg_dump(self) -> list[list[str]]:
        out = self.sim.run("wg", "show", IFACE, "dump")
        return [line.split("\t") for line in out.strip().splitlines()]


def make_mesh(sims: list[SimNode], mode: BackendMode, state_dir: Path) -> list[MeshNode]:
    """Join the simulated nodes pairwise by veth (node i ↔ i+1) and build one manager each."""
    config = FelixConfig(wireguard_enabled=True, wireguard_mtu=1400)
    nodes: list[MeshNode] = []
    for i, sim in enumerate(sims):
        sup = None
        if mode is BackendMode.USERSPACE:
            sup = WireguardGoSupervisor(
                str(state_dir / sim.name), socket_dir=sim.socket_dir, prefix_cmd=sim.nsenter_prefix
            )
        backend = select_backend(mode, interfaces=[IFACE], supervisor=sup, netns=sim.netns)
        node = MeshNode(
            name=sim.name,
            sim=sim,
            underlay=f"10.99.0.{i + 1}",
            tunnel=f"10.65.{i}.1",
            block=f"10.65.{i}.0/26",
            backend=backend,
            manager=None,  # type: ignore[arg-type]
            supervisor=sup,
        )
        node.manager = WireguardManager(
            sim.name,
            config.for_family(IPFamily.V4),
            netlink=backend.netlink,
            wireguard=backend.wireguard,
            sysfs=FileSysfs(sim.netns),
            status_callback=node.published.append,
            link_kind=backend.link_kind,
        )
        nodes.append(node)
    bridge_underlay(nodes)
    return nodes


def bridge_underlay(nodes: list[MeshNode]) -> None:
    """Two nodes: one veth. More: a bridge in the first node's namespace would be needed (unused)."""
    assert len(nodes) == 2, "the manager-level mesh joins exactly two nodes"
    a, b = nodes
    veth_pair(a.sim, b.sim, f"{a.underlay}/24", f"{b.underlay}/24")


def exchange(nodes: list[MeshNode], extra_peers: int = 0) -> dict[Key, str]:
    """Tell every node about every other (and about `extra_peers` made-up nodes). Returns the
    made-up peers' keys with their /32."""
    fake: dict[Key, str] = {}
    for i in range(extra_peers):
        fake[PrivateKey.generate().public_key()] = f"10.200.{i // 250}.{i % 250 + 1}/32"
    for node in nodes:
        m = node.manager
        m.endpoint_wireguard_update(node.name, node.key, ipaddress.ip_address(node.tunnel))
        m.route_update(node.name, ipaddress.ip_network(node.block))
        for other in nodes:
            if other is node:
                continue
            m.endpoint_update(other.name, ipaddress.ip_address(other.underlay))
            m.endpoint_wireguard_update(other.name, other.key, ipaddress.ip_address(other.tunnel))
            m.route_update(other.name, ipaddress.ip_network(other.block))
            m.route_update(other.name, ipaddress.ip_network(f"{other.tunnel}/32"))
        for j, (k, cidr) in enumerate(fake.items()):
            name = f"fake{j}"
            m.endpoint_update(name, ipaddress.ip_address(f"10.98.{j // 250}.{j % 250 + 1}"))
            m.endpoint_wireguard_update(name, k, None)
            m.route_update(name, ipaddress.ip_network(cidr))
    return fake


def start_capture(sim: SimNode, path: Path) -> subprocess.Popen[bytes]:
    """tcpdump on the node's underlay (eth0) into `path`, attached before it returns."""
    proc = sim.popen(
        "tcpdump",
        "-i",
        "eth0",
        "-nn",
        "-U",
        "-w",
        str(path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # let tcpdump attach before the traffic starts
    return proc


def stop_capture(proc: subprocess.Popen[bytes], path: Path) -> list[str]:
    time.sleep(0.5)
    proc.terminate()
    proc.wait(timeout=10)
    out = subprocess.run(
        ["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def classify(lines: list[str], inner_prefix: str = "10.65.") -> dict[str, int]:
    """Count captured packets: WireGuard UDP on our port, plaintext (an inner address visible on the
    underlay), link control (ARP, IPv6 neighbour discovery), and anything else."""
    counts = {"wireguard": 0, "plaintext": 0, "control": 0, "other": 0}
    port = re.compile(rf"\.{PORT}[ :>]")
    for line in lines:
        if inner_prefix in line:
            counts["plaintext"] += 1
        elif "ARP" in line or "ICMP6" in line:
            counts["control"] += 1
        elif "UDP" in line and port.search(line):
            counts["wireguard"] += 1
        else:
            counts["other"] += 1
    return counts


def check_two_node_mesh(a: MeshNode, b: MeshNode, tmp: Path, extra_peers: int) -> None:
    """Program both nodes, then check real outcomes: ping through the tunnel, only WireGuard UDP
    on the underlay, `wg show` peers and allowed IPs, routes in table 1, the rule and the MTU."""
    for n in (a, b):
        n.apply()
        assert n.published, f"{n.name} published no key"
        assert not n.key.is_zero
    fake = exchange([a, b], extra_peers=extra_peers)
    for n in (a, b):
        n.apply()

    pcap = tmp / f"{a.name}.pcap"
    capture = start_capture(a.sim, pcap)
    ping = a.sim.run("ping", "-c", "5", "-i", "0.2", "-W", "2", b.tunnel)
    lines = stop_capture(capture, pcap)
    assert " 0% packet loss" in ping, ping
    counts = classify(lines)
    assert counts["plaintext"] == 0, lines
    assert counts["wireguard"] >= 10, lines
    assert counts["other"] == 0, lines

    dump = a.wg_dump()
    device, peers = dump[0], {row[0]: row for row in dump[1:]}
    assert device[2] == str(PORT)
    assert device[1] == a.key.to_base64()
    assert len(peers) == 1 + extra_peers
    peer_b = peers[b.key.to_base64()]
    assert peer_b[2] == f"{b.underlay}:{PORT}"
    assert set(peer_b[3].split(",")) == {b.block, f"{b.tunnel}/32"}
    for k, cidr in fake.items():
        assert peers[k.to_base64()][3] == cidr

    routes = json.loads(a.sim.run("ip", "-j", "route", "show", "table", "1"))
    by_dst = {r["dst"]: r for r in routes}
    assert by_dst[b.block]["dev"] == IFACE
    assert by_dst[b.tunnel]["dev"] == IFACE
    assert by_dst[a.block]["type"] == "throw"
    assert len([r for r in routes if r.get("dev") == IFACE]) == 2 + extra_peers
    rules = a.sim.run("ip", "rule", "show", "pref", "99")
    assert "not from all fwmark 0x100000/0x100000 lookup 1" in rules
    link = json.loads(a.sim.run("ip", "-j", "link", "show", IFACE))[0]
    assert link["mtu"] == 1400
