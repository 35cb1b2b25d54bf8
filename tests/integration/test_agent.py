"""`meshcrypt agent` end to end: real etcd, agents in network namespaces, wireguard-go, real packets.

Each test builds a `cluster` (tests/integration/cluster.py): a bridge underlay, etcd serving on it, an
IPPool and FelixConfiguration `default` with WireGuard enabled; agents register, claim blocks, publish
keys and program each other as peers with no further step.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from meshcrypt.datastore import layout
from tests.integration.cluster import (
    AgentNode,
    Cluster,
    cluster,
    mesh_converged,
    resource,
    wait_for,
)
from tests.integration.mesh import classify, start_capture, stop_capture

pytestmark = pytest.mark.integration


def tunnel_of(c: Cluster, name: str) -> str:
    doc = c.node_doc(name) or {}
    value = doc.get("spec", {}).get("wireguard", {}).get("interfaceIPv4Address", "")
    return value if isinstance(value, str) else ""


def expected_allowed(c: Cluster, name: str) -> set[str]:
    return {*c.blocks_of(name), f"{tunnel_of(c, name)}/32"}


def converged(c: Cluster, nodes: list[AgentNode]) -> bool:
    """Every node's published key is its kernel key and every other keyed node is its peer with
    the right endpoint and allowed IPs (its block and tunnel address)."""
    return mesh_converged(
        c,
        nodes,
        endpoint=lambda other: f"{other.address}:51820",
        allowed=lambda other: expected_allowed(c, other.name),
        node_ok=lambda node: bool(tunnel_of(c, node.name)),
    )


def route_kinds(node: AgentNode) -> dict[str, str]:
    """dst -> "device" (via wireguard.cali) or "throw", for table 1."""
    found = {}
    for r in node.routes():
        dst = r["dst"] if "/" in r["dst"] else f"{r['dst']}/32"
        found[dst] = "throw" if r.get("type") == "throw" else r.get("dev", "?")
    return found


def has_our_rule(node: AgentNode) -> bool:
    return any(
        r.get("priority") == 99 and r.get("table") == "1" and r.get("fwmark") == "0x100000"
        for r in node.rules()
    )


def http_get(node: AgentNode, port: int, path: str) -> tuple[int, str]:
    out = node.sh(
        "python3",
        "-c",
        "import sys,urllib.request,urllib.error\n"
        "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=5); print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\n",
        f"http://127.0.0.1:{port}{path}",
    )
    status, _, body = out.partition("\n")
    return int(status), body


def ping_ok(node: AgentNode, src: str, dst: str, count: int = 3) -> bool:
    out = node.sh("ping", "-c", str(count), "-i", "0.2", "-W", "2", "-I", src, dst, check=False)
    return " 0% packet loss" in out


def test_three_agents_converge_and_encrypt(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        nodes = [c.add_node(n, FELIX_PROMETHEUSMETRICSENABLED="true") for n in ("n1", "n2", "n3")]
        wait_for("three agents to converge", lambda: converged(c, nodes), timeout=60)
        blocks = [c.blocks_of(n.name) for n in nodes]
        assert len({b[0] for b in blocks}) == 3, blocks

        for node in nodes:
            kinds = route_kinds(node)
            for other in nodes:
                want = "throw" if other is node else "wireguard.cali"
                for cidr in c.blocks_of(other.name):
                    assert kinds.get(cidr) == want, (node.name, cidr, kinds)
                if other is not node:
                    assert kinds.get(f"{tunnel_of(c, other.name)}/32") == "wireguard.cali", kinds
            assert has_our_rule(node), node.rules()

        a, b = nodes[0], nodes[1]
        pa, pb = c.give_pod_address(a), c.give_pod_address(b)
        pcap = tmp_path / "a.pcap"
        capture = start_capture(a.sim, pcap)
        assert ping_ok(a, pa, pb, count=5)
        counts = classify(stop_capture(capture, pcap))
        assert counts["plaintext"] == 0, counts
        assert counts["wireguard"] >= 10, counts

        status, body = http_get(a, 9099, "/readiness")
        assert status == 200, body
        assert http_get(a, 9099, "/liveness")[0] == 200
        status, metrics = http_get(a, 9091, "/metrics")
        assert status == 200
        assert "wireguard_meta{" in metrics and "wireguard_bytes_sent{" in metrics
        assert "meshcrypt_event_to_programmed_seconds_count" in metrics
        assert 'meshcrypt_wireguard_peers_programmed{family="IPv4"} 2' in metrics
        for node in nodes:
            private = node.sh("wg", "show", "wireguard.cali", "private-key").strip()
            assert private and private not in node.log()
            assert private not in json.dumps(c.node_doc(node.name))
        for node in nodes:
            assert node.alive, node.log()[-2000:]


def test_key_removed_shared_deleted_and_changed(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        nodes = [c.add_node(n) for n in ("n1", "n2", "n3")]
        n1, n2, n3 = nodes
        wait_for("convergence", lambda: converged(c, nodes), timeout=60)

        # A running agent restores its key when someone overwrites it.
        key3 = n3.public_key()
        doc = c.node_doc("n3")
        assert doc is not None
        doc["status"]["wireguardPublicKey"] = ""
        c.put_json(layout.node_key("n3"), doc)
        wait_for("n3 restores its key", lambda: c.published_key("n3") == key3, timeout=10)

        # With n3's agent stopped (its dataplane stays), a removed key means throw routes elsewhere.
        assert n3.stop() == 0
        doc = c.node_doc("n3")
        assert doc is not None
        doc["status"]["wireguardPublicKey"] = ""
        c.put_json(layout.node_key("n3"), doc)
        (block3,) = c.blocks_of("n3")

        def n3_thrown(node: AgentNode) -> bool:
            return key3 not in node.peers() and route_kinds(node).get(block3) == "throw"

        for node in (n1, n2):
            wait_for(f"{node.name}: n3 not a peer, its block thrown", n3_thrown, node, timeout=10)

        # Two nodes with the same key are programmed on nobody.
        key2 = n2.public_key()
        assert n2.stop() == 0
        doc = c.node_doc("n3")
        assert doc is not None
        doc["status"]["wireguardPublicKey"] = key2
        c.put_json(layout.node_key("n3"), doc)
        (block2,) = c.blocks_of("n2")
        wait_for(
            "n1 programs neither n2 nor n3",
            lambda: (
                not n1.peers()
                and route_kinds(n1).get(block2) == "throw"
                and route_kinds(n1).get(block3) == "throw"
            ),
            timeout=10,
        )

        # A key change (n2 restarted with its device gone: a new key) is applied everywhere.
        n2.sh("ip", "link", "del", "wireguard.cali", check=False)
        doc = c.node_doc("n3")
        assert doc is not None
        doc["status"]["wireguardPublicKey"] = key3
        c.put_json(layout.node_key("n3"), doc)
        n2.start()
        wait_for(
            "n2 publishes a new key", lambda: c.published_key("n2") not in ("", key2), timeout=20
        )
        new2 = c.published_key("n2")
        wait_for(
            "n1 peers with n2's new key", lambda: new2 in n1.peers() and key2 not in n1.peers()
        )
        assert route_kinds(n1).get(block2) == "wireguard.cali"

        # Deleting a node (and, as Calico's controller does, its blocks) removes it everywhere.
        tunnel3 = tunnel_of(c, "n3")
        c.etcd.delete(layout.node_key("n3"))
        for cidr in c.blocks_of("n3"):
            net = ipaddress.ip_network(cidr)
            c.etcd.delete(layout.ipam_block_key(net))
            c.etcd.delete(layout.block_affinity_key("n3", net))

        def forgot_n3(node: AgentNode) -> bool:
            kinds = route_kinds(node)
            return key3 not in node.peers() and block3 not in kinds and f"{tunnel3}/32" not in kinds

        for node in (n1, n2):
            wait_for(f"{node.name} forgets n3", forgot_n3, node, timeout=10)
        assert n1.alive and n2.alive


def test_etcd_outage_with_compaction(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        a, b = c.add_node("n1"), c.add_node("n2")
        wait_for("convergence", lambda: converged(c, [a, b]), timeout=60)
        pa, pb = c.give_pod_address(a), c.give_pod_address(b)
        assert ping_ok(a, pa, pb)

        # etcd goes away for the agents; meanwhile the cluster changes and history is compacted.
        c.etcd.stop()
        c.etcd.start_private()
        ghost_key = "m8bB0xTtGzMhbvtxyOP9KPGsJ3PdHJr3yJwHxbG6vV8="
        c.put_json(
            layout.node_key("ghost"),
            json.loads(
                resource(
                    "Node",
                    "ghost",
                    {"bgp": {"ipv4Address": f"192.168.{c.net}.99/24"}},
                    status={"wireguardPublicKey": ghost_key},
                )
            ),
        )
        c.put_json(
            "/calico/ipam/v2/assignment/ipv4/block/10.65.200.0-26",
            {
                "cidr": "10.65.200.0/26",
                "affinity": "host:ghost",
                "allocations": [],
                "unallocated": [],
                "attributes": [],
                "deleted": False,
                "strictAffinity": False,
            },
        )
        c.set_felix(wireguardEnabled=True, wireguardKeepAlive="7s")
        c.etcd.compact()
        time.sleep(20)
        for node in (a, b):
            assert node.alive, node.log()[-2000:]
        assert ping_ok(a, pa, pb), "traffic must keep flowing while etcd is away"
        c.etcd.stop()
        c.etcd.start()

        def caught_up(node: AgentNode) -> bool:
            peers = node.peers()
            ghost = peers.get(ghost_key)
            return (
                ghost is not None
                and ghost["endpoint"] == f"192.168.{c.net}.99:51820"
                and "10.65.200.0/26" in ghost["allowed_ips"]
                and all(p["keepalive"] == "7" for p in peers.values())
            )

        for node in (a, b):
            wait_for(f"{node.name} catches up after the outage", caught_up, node, timeout=30)
        assert ping_ok(a, pa, pb)


def test_ten_agents_get_distinct_blocks(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        nodes = [c.add_node(f"n{i}", start=False) for i in range(10)]
        for node in nodes:
            node.start()
        blocks = wait_for(
            "a block for every node",
            lambda: (
                [c.blocks_of(n.name) for n in nodes]
                if all(c.blocks_of(n.name) for n in nodes)
                else None
            ),
            timeout=60,
        )
        assert all(len(b) == 1 for b in blocks), blocks
        assert len({b[0] for b in blocks}) == 10, blocks
        wait_for("ten agents converge", lambda: converged(c, nodes), timeout=90)


def test_malformed_resources_are_skipped(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        a, b = c.add_node("n1"), c.add_node("n2")
        wait_for("convergence", lambda: converged(c, [a, b]), timeout=60)
        bad = {
            layout.node_key("broken"): json.dumps(
                {
                    "kind": "Node",
                    "apiVersion": "projectcalico.org/v3",
                    "metadata": {"name": "broken"},
                    "spec": {"bgp": {"ipv4Address": f"192.168.{c.net}.50/24"}},
                    "status": {"wireguardPublicKey": "not-a-key"},
                }
            ),
            "/calico/ipam/v2/assignment/ipv4/block/10.65.99.0-26": '{"cidr": "10.65.99.0/99"}',
            layout.felix_configuration_key("node.n1"): "{not json",
        }
        for key, value in bad.items():
            c.etcd.put(key, value)
        # Still working: a change after the bad values is applied on both nodes.
        c.set_felix(wireguardEnabled=True, wireguardKeepAlive="9s")

        def keepalive_9(node: AgentNode) -> bool:
            return [p["keepalive"] for p in node.peers().values()] == ["9"]

        for node in (a, b):
            wait_for(f"{node.name} applies the keepalive", keepalive_9, node, timeout=20)
        time.sleep(1)
        for node in (a, b):
            log = node.log()
            assert node.alive, log[-2000:]
            for key in bad:
                assert log.count(f"Skipping {key} ") == 1, (key, log[-3000:])
        assert converged(c, [a, b])


def test_kill9_keeps_traffic_and_key(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        a, b = c.add_node("n1"), c.add_node("n2")
        wait_for("convergence", lambda: converged(c, [a, b]), timeout=60)
        pa, pb = c.give_pod_address(a), c.give_pod_address(b)
        key = a.public_key()
        revision = c.etcd.mod_revision(layout.node_key("n1"))
        ping = a.sim.popen(
            "ping", "-c", "40", "-i", "0.1", "-W", "1", "-I", pa, pb,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        time.sleep(1)
        a.stop(signal.SIGKILL)
        time.sleep(1)
        a.start()
        out, _ = ping.communicate(timeout=30)
        assert " 0% packet loss" in out, out
        wait_for("n1 ready again", lambda: http_get(a, 9099, "/readiness")[0] == 200, timeout=30)
        time.sleep(2)
        assert a.public_key() == key
        assert c.published_key("n1") == key
        assert c.etcd.mod_revision(layout.node_key("n1")) == revision, "nothing new published"
        # SIGTERM leaves the dataplane as it is.
        assert a.stop() == 0
        assert a.public_key() == key and ping_ok(a, pa, pb)


def test_disable_and_enable_via_felix_configuration(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        nodes = [c.add_node("n1"), c.add_node("n2")]
        wait_for("convergence", lambda: converged(c, nodes), timeout=60)
        c.set_felix(wireguardEnabled=False)

        def torn_down(node: AgentNode) -> bool:
            link = node.sh("ip", "link", "show", "wireguard.cali", check=False)
            return (
                not link.strip()
                and not node.routes()
                and not has_our_rule(node)
                and c.published_key(node.name) == ""
                and tunnel_of(c, node.name) == ""
            )

        for node in nodes:
            wait_for(f"{node.name} disabled", torn_down, node, timeout=20)
        c.set_felix(wireguardEnabled=True)
        wait_for("the mesh comes back", lambda: converged(c, nodes), timeout=30)


def test_mtu_follows_the_underlay(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        node = c.add_node("n1")

        def device_mtu() -> int:
            out = node.sh("ip", "-j", "link", "show", "wireguard.cali", check=False)
            return int(json.loads(out)[0]["mtu"]) if out.strip() else 0

        wait_for("device MTU 1440 (eth0 1500 - 60)", lambda: device_mtu() == 1440, timeout=30)
        node.sh("ip", "link", "set", "eth0", "mtu", "9000")
        wait_for(
            "device MTU 8940 after eth0 went to 9000", lambda: device_mtu() == 8940, timeout=10
        )
        node.sh("ip", "link", "set", "eth0", "mtu", "1500")
        wait_for("device MTU back to 1440", lambda: device_mtu() == 1440, timeout=10)
