"""IPv6 and dual stack end to end: real agents on an IPv6-only and on a dual-stack underlay.

The IPv6 family has its own device (`wg-v6.cali`, port 51821, MTU host − 80), its own key
(`status.wireguardPublicKeyV6`), IPv6 blocks and tunnel addresses (`interfaceIPv6Address`), and the
same table number and rule priority as IPv4 (the kernel keeps the families' tables apart). Pod
traffic (loopback "pod" addresses in the blocks) crosses the underlay only as WireGuard UDP.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.cluster import (
    IFACE,
    IFACE6,
    AgentNode,
    Cluster,
    captured,
    classify_underlay,
    cluster,
    mesh_converged,
    wait_for,
)
from tests.integration.test_agent import ping_ok

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Family:
    version: int
    iface: str
    port: int
    status_field: str
    tunnel_field: str
    flag: str

    @property
    def host_length(self) -> int:
        return 32 if self.version == 4 else 128

    def address(self, node: AgentNode) -> str:
        found = node.address if self.version == 4 else node.address6
        assert found is not None
        return found

    def endpoint(self, node: AgentNode) -> str:
        host = self.address(node)
        return f"{host}:{self.port}" if self.version == 4 else f"[{host}]:{self.port}"


V4 = Family(4, IFACE, 51820, "wireguardPublicKey", "interfaceIPv4Address", "-4")
V6 = Family(6, IFACE6, 51821, "wireguardPublicKeyV6", "interfaceIPv6Address", "-6")
RULE = "99:\tnot from all fwmark 0x100000/0x100000 lookup 1"


def tunnel(c: Cluster, name: str, family: Family) -> str:
    doc = c.node_doc(name) or {}
    value = doc.get("spec", {}).get("wireguard", {}).get(family.tunnel_field, "")
    return value if isinstance(value, str) else ""


def converged(c: Cluster, nodes: list[AgentNode], family: Family) -> bool:
    """For `family`: every node publishes its device's key and has a tunnel address in its block;
    every other node is its peer with the family's endpoint, block and tunnel address."""

    def tunnel_in_block(node: AgentNode) -> bool:
        address = tunnel(c, node.name, family)
        blocks = c.blocks_of(node.name, family.version)
        if not address or len(blocks) != 1:
            return False
        return ipaddress.ip_address(address) in ipaddress.ip_network(blocks[0])

    return mesh_converged(
        c,
        nodes,
        endpoint=family.endpoint,
        allowed=lambda other: {
            *c.blocks_of(other.name, family.version),
            f"{tunnel(c, other.name, family)}/{family.host_length}",
        },
        node_ok=tunnel_in_block,
        iface=family.iface,
        status_field=family.status_field,
    )


def check_table_and_rule(
    c: Cluster, node: AgentNode, nodes: list[AgentNode], family: Family
) -> None:
    assert node.sh("ip", family.flag, "rule", "show", "pref", "99").strip() == RULE
    kinds = node.route_kinds(family.flag)
    for other in nodes:
        (block,) = c.blocks_of(other.name, family.version)
        if other is node:
            assert kinds[block] == "throw", kinds
        else:
            assert kinds[block] == family.iface, kinds
            assert kinds[f"{tunnel(c, other.name, family)}/{family.host_length}"] == family.iface
    table = node.sh("ip", family.flag, "route", "show", "table", "1")
    if family.version == 6:  # as Felix's FV checks it (metric 1024 is the IPv6 default)
        (remote,) = c.blocks_of(next(o for o in nodes if o is not node).name, 6)
        assert f"{remote} dev {IFACE6} metric 1024 pref medium" in table, table


def device_mtu(node: AgentNode, iface: str) -> int:
    return int(json.loads(node.sh("ip", "-j", "link", "show", iface))[0]["mtu"])


def test_ipv6_only_cluster(tmp_path: Path) -> None:
    with cluster(tmp_path, stack="v6") as c:
        nodes = [c.add_node(n) for n in ("n1", "n2")]
        a, b = nodes
        wait_for("the IPv6 mesh", lambda: converged(c, nodes, V6), timeout=60)
        for node in nodes:
            check_table_and_rule(c, node, nodes, V6)
            assert not node.sh("ip", "link", "show", IFACE, check=False).strip()
            assert not node.sh("ip", "-4", "rule", "show", "pref", "99").strip()
            assert c.published_key(node.name, V4.status_field) == ""
            assert device_mtu(node, IFACE6) == 1420  # eth0 1500 - 80
            node_doc = c.node_doc(node.name) or {}
            assert node_doc["spec"]["bgp"] == {"ipv6Address": f"{node.address6}/64"}

        pa, pb = c.give_pod_address(a, 6), c.give_pod_address(b, 6)
        with captured(a, tmp_path / "a.pcap") as lines:
            assert ping_ok(a, pa, pb, count=5)
        found = classify_underlay(lines, c.etcd_hosts)
        assert not found["other"], found["other"]
        assert len(found["wireguard"]) >= 10, found
        assert all(".51821 " in line for line in found["wireguard"])


def test_dual_stack_cluster(tmp_path: Path) -> None:
    with cluster(tmp_path, stack="dual") as c:
        nodes = [c.add_node(n) for n in ("n1", "n2")]
        a, b = nodes
        for family in (V4, V6):
            wait_for(
                f"the IPv{family.version} mesh", lambda f=family: converged(c, nodes, f), timeout=60
            )
        for node in nodes:
            for family in (V4, V6):
                check_table_and_rule(c, node, nodes, family)
            assert (device_mtu(node, IFACE), device_mtu(node, IFACE6)) == (1440, 1420)
            # Two keys, one per device.
            assert node.public_key(IFACE) != node.public_key(IFACE6)

        pa4, pb4 = c.give_pod_address(a, 4), c.give_pod_address(b, 4)
        pa6, pb6 = c.give_pod_address(a, 6), c.give_pod_address(b, 6)
        with captured(a, tmp_path / "a.pcap") as lines:
            assert ping_ok(a, pa4, pb4, count=5)
            assert ping_ok(a, pa6, pb6, count=5)
        found = classify_underlay(lines, c.etcd_hosts)
        assert not found["other"], found["other"]
        v4 = [line for line in found["wireguard"] if " IP " in line]
        v6 = [line for line in found["wireguard"] if " IP6 " in line]
        assert len(v4) >= 10 and all(".51820 " in line for line in v4), found
        assert len(v6) >= 10 and all(".51821 " in line for line in v6), found

        # Host encryption on: each family's node addresses join the peers and go through that
        # family's device; both WireGuard ports are marked; tunnel addresses are released.
        c.set_felix(**c.wireguard_spec(wireguardHostEncryptionEnabled=True))

        def host_encrypted(node: AgentNode, other: AgentNode) -> bool:
            for family in (V4, V6):
                host = f"{family.address(other)}/{family.host_length}"
                peer = node.peers(family.iface).get(other.public_key(family.iface))
                if peer is None or host not in peer["allowed_ips"]:
                    return False
                kinds = node.route_kinds(family.flag)
                (block,) = c.blocks_of(other.name, family.version)
                if kinds.get(host) != family.iface or kinds.get(block) != family.iface:
                    return False  # the device routes survive the address change too
                if tunnel(c, node.name, family):
                    return False
            return "udp dport { 51820, 51821 }" in node.sh(
                "nft", "list", "table", "inet", "meshcrypt", check=False
            )

        for node, other in ((a, b), (b, a)):
            wait_for(f"{node.name} encrypts host traffic", host_encrypted, node, other, timeout=30)
        with captured(a, tmp_path / "a-hosts.pcap") as lines:
            assert ping_ok(a, a.address, b.address)
            assert ping_ok(a, str(a.address6), str(b.address6))
        found = classify_underlay(lines, c.etcd_hosts)
        assert not found["other"], found["other"]
        assert any(" IP6 " in line for line in found["wireguard"]), found
