"""A lab without agents (2 nodes, 2 pods each, dual stack): what `lab up` builds, and the commands
that work on it. Pod traffic crosses the underlay in plaintext over the BIRD-style routes, exactly
as in a Calico cluster without WireGuard."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshcrypt.datastore import layout
from meshcrypt.lab.cluster import workload_endpoint_name
from tests.lab.conftest import LabUnderTest, counted, etcd_get

pytestmark = pytest.mark.integration


def ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []


def addresses_on(netns: str, dev: str) -> set[str]:
    links = ip_json("-n", netns, "addr", "show", "dev", dev)
    return {a["local"] for link in links for a in link["addr_info"] if a["scope"] != "link"}


def test_up_records_what_it_made(lab_no_agents: LabUnderTest):
    state = lab_no_agents.state()
    assert [n.name for n in state.nodes] == ["node1", "node2"]
    assert [p.name for p in state.pods] == [
        "node1-pod1",
        "node1-pod2",
        "node2-pod1",
        "node2-pod2",
    ]
    assert state.bridge == f"{lab_no_agents.prefix}0"
    assert state.etcd is not None and state.etcd.process is not None
    assert state.etcd.process.running()
    assert all(n.holder is not None and n.holder.running() for n in state.nodes)
    assert all(n.agent is None for n in state.nodes)
    assert state.etcd.node_endpoint == f"http://{lab_no_agents.bridge_ip()}:2379"


def test_namespaces_bridge_and_underlay(lab_no_agents: LabUnderTest):
    lab, state = lab_no_agents, lab_no_agents.state()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    netns = set(listed.stdout.split())
    assert {n.netns for n in state.nodes} | {p.netns for p in state.pods} <= netns
    bridge = f"{lab.prefix}0"
    (link,) = ip_json("addr", "show", "dev", bridge)
    assert {a["local"] for a in link["addr_info"]} >= {lab.bridge_ip(4), lab.bridge_ip(6)}
    ports = {p["ifname"] for p in ip_json("link", "show", "master", bridge)}
    assert ports == {f"{lab.prefix}-n1", f"{lab.prefix}-n2"}
    for node in state.nodes:
        assert addresses_on(node.netns, "eth0") == {
            str(ipaddress.ip_interface(a).ip) for a in node.addresses
        }
        (default,) = ip_json("-n", node.netns, "route", "show", "default")
        assert default["gateway"] == lab.bridge_ip(4)
    assert state.nodes[0].addresses == [f"192.168.{lab.net}.11/24", f"fd00:{lab.net}::11/64"]


def test_node_has_private_wireguard_and_state_dirs(lab_no_agents: LabUnderTest):
    res = lab_no_agents.cli("exec", "node1", "--", "sh", "-c", "cat /proc/self/mounts")
    assert res.returncode == 0, res.stderr
    tmpfs = {line.split()[1] for line in res.stdout.splitlines() if line.split()[2] == "tmpfs"}
    assert {"/run/wireguard", "/run/meshcrypt"} <= tmpfs


def test_etcd_serves_the_host_and_the_nodes(lab_no_agents: LabUnderTest):
    url = f"http://{lab_no_agents.bridge_ip()}:2379/health"
    probe = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    )
    res = lab_no_agents.cli("exec", "node2", "--", sys.executable, "-c", probe)
    assert res.returncode == 0, res.stderr
    assert '"health":"true"' in res.stdout.replace(" ", "")


def test_datastore_holds_pools_felix_configuration_and_workloads(lab_no_agents: LabUnderTest):
    ((_, felix),) = etcd_get(lab_no_agents, layout.felix_configuration_key("default"))
    assert felix["spec"] == {
        "wireguardEnabled": True,
        "wireguardEnabledV6": True,
        "wireguardHostEncryptionEnabled": False,
    }
    pools = {
        doc["spec"]["cidr"]: doc["spec"]["blockSize"]
        for _, doc in etcd_get(lab_no_agents, layout.IP_POOLS, prefix=True)
    }
    assert pools == {"10.65.0.0/16": 26, "fd00:65::/48": 122}
    state = lab_no_agents.state()
    for pod in state.pods:
        key = layout.workload_endpoint_key("default", workload_endpoint_name(pod.node, pod.name))
        ((_, wep),) = etcd_get(lab_no_agents, key)
        assert wep["spec"]["node"] == pod.node
        assert wep["spec"]["interfaceName"] == pod.ifname
        assert sorted(wep["spec"]["ipNetworks"]) == sorted(
            f"{a}/{ipaddress.ip_address(a).max_prefixlen}" for a in pod.addresses
        )
    # No Node resources: the agents register their nodes themselves.
    assert etcd_get(lab_no_agents, layout.NODES, prefix=True) == []


def test_blocks_are_distinct_and_pods_are_allocated_from_them(lab_no_agents: LabUnderTest):
    state = lab_no_agents.state()
    blocks = {}
    for _, doc in etcd_get(lab_no_agents, "/calico/ipam/v2/assignment/", prefix=True):
        blocks[ipaddress.ip_network(doc["cidr"])] = doc
    owned = {n.name: [ipaddress.ip_network(b) for b in n.blocks] for n in state.nodes}
    assert len(owned["node1"]) == len(owned["node2"]) == 2  # one per family
    assert not set(owned["node1"]) & set(owned["node2"])
    for node, cidrs in owned.items():
        for cidr in cidrs:
            assert blocks[cidr]["affinity"] == f"host:{node}"
            affinity = layout.block_affinity_key(node, cidr)
            assert etcd_get(lab_no_agents, affinity)[0][1]["state"] == "confirmed"
    for pod in state.pods:
        for text in pod.addresses:
            address = ipaddress.ip_address(text)
            (cidr,) = [c for c in owned[pod.node] if address in c]
            doc = blocks[cidr]
            ordinal = int(address) - int(cidr.network_address)
            attribute = doc["attributes"][doc["allocations"][ordinal]]
            assert attribute["secondary"]["pod"] == pod.name
            assert attribute["handle_id"].startswith("k8s-pod-network.")
            assert ordinal not in doc["unallocated"]
        # ... and the pod really has them
        assert addresses_on(pod.netns, "eth0") == set(pod.addresses)


def test_pods_are_wired_like_calico(lab_no_agents: LabUnderTest):
    state = lab_no_agents.state()
    pod = state.pods[0]
    node = state.node(pod.node)
    routes = ip_json("-n", pod.netns, "route", "show")
    assert {"dst": "default", "gateway": "169.254.1.1", "dev": "eth0"}.items() <= next(
        r for r in routes if r["dst"] == "default"
    ).items()
    assert any(r["dst"] == "169.254.1.1" and r.get("scope") == "link" for r in routes)
    (v6_default,) = ip_json("-6", "-n", pod.netns, "route", "show", "default")
    assert v6_default["gateway"] == "fe80::ecee:eeff:feee:eeee"
    to_pod = ip_json("-n", node.netns, "route", "show", f"{pod.addresses[0]}/32")
    assert to_pod and to_pod[0]["dev"] == pod.ifname
    assert pod.ifname.startswith("cali") and len(pod.ifname) == 15
    proxy_arp = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            node.netns,
            "cat",
            f"/proc/sys/net/ipv4/conf/{pod.ifname}/proxy_arp",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert proxy_arp == "1"


def test_nodes_route_to_each_others_blocks_like_bird(lab_no_agents: LabUnderTest):
    state = lab_no_agents.state()
    node1, node2 = state.nodes
    v4_block = node2.blocks[0]
    (route,) = ip_json("-n", node1.netns, "route", "show", v4_block)
    assert route["gateway"] == str(ipaddress.ip_interface(node2.addresses[0]).ip)
    assert route["protocol"] == "bird"
    (own,) = ip_json("-n", node1.netns, "route", "show", node1.blocks[0])
    assert own["type"] == "blackhole"
    (v6,) = ip_json("-6", "-n", node1.netns, "route", "show", node2.blocks[1])
    assert v6["gateway"] == str(ipaddress.ip_interface(node2.addresses[1]).ip)


def test_ping_matrix_passes_over_the_plaintext_routes(lab_no_agents: LabUnderTest):
    res = lab_no_agents.cli("ping", "--count", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "8/8 pings passed" in res.stdout  # 4 pods × 1 other node × 2 families
    assert "IPv4" in res.stdout and "IPv6" in res.stdout


def test_capture_sees_plaintext_pod_traffic_without_agents(lab_no_agents: LabUnderTest):
    res = lab_no_agents.cli("capture", "node1", "--seconds", "1")
    assert res.returncode == 1, res.stdout + res.stderr
    assert counted(res.stdout, "WireGuard (UDP)") == 0
    assert counted(res.stdout, "plaintext pod traffic") > 0
    assert "FAIL: pod traffic crossed the underlay unencrypted" in res.stdout
    assert (lab_no_agents.dir / "capture-node1.pcap").stat().st_size > 24


def test_exec_runs_in_nodes_and_pods(lab_no_agents: LabUnderTest):
    state = lab_no_agents.state()
    res = lab_no_agents.cli("exec", "node2", "--", "ip", "-o", "addr", "show", "dev", "eth0")
    assert res.returncode == 0 and f"192.168.{lab_no_agents.net}.12/24" in res.stdout
    pod = state.pods[0]
    res = lab_no_agents.cli("exec", pod.name, "--", "ip", "-o", "addr", "show", "dev", "eth0")
    assert res.returncode == 0 and f"{pod.addresses[0]}/32" in res.stdout
    assert lab_no_agents.cli("exec", "node1", "--", "sh", "-c", "exit 7").returncode == 7
    # --dir may follow the target; everything after `--` is the command, options included.
    here = ["exec", "node1", "--dir", str(lab_no_agents.dir), "--"]
    res = lab_no_agents.cli(
        *here, "sh", "-c", "echo --dir -- x; exit 5", env={"MESHCRYPT_LAB_DIR": "/nonexistent"}
    )
    assert res.returncode == 5 and res.stdout == "--dir -- x\n"
    # In a node, meshcrypt's own commands find the node's name, etcd and the meshcrypt program.
    res = lab_no_agents.cli(
        "exec", "node2", "--", "sh", "-c", 'echo "$NODENAME $ETCD_ENDPOINTS"; command -v meshcrypt'
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"node2 http://{lab_no_agents.bridge_ip()}:2379",
        str(Path(sys.executable).parent / "meshcrypt"),
    ]
    res = lab_no_agents.cli("exec", "node9", "--", "true")
    assert res.returncode == 1 and "no node or pod named 'node9'" in res.stderr


def test_status_shows_nodes_without_agents(lab_no_agents: LabUnderTest):
    res = lab_no_agents.cli("status")
    assert res.returncode == 0, res.stderr
    node_lines = [line for line in res.stdout.splitlines() if line.startswith("node")]
    assert any(line.startswith("node1 ") and "not started" in line for line in node_lines)
    assert "healthy" in res.stdout


def test_forwarding_guard_is_installed(lab_no_agents: LabUnderTest):
    cmd = ["nft", "list", "table", "inet", lab_no_agents.prefix]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert f'iifname "{lab_no_agents.prefix}0" oifname != "{lab_no_agents.prefix}0"' in out


def test_up_refuses_while_the_lab_exists(lab_no_agents: LabUnderTest):
    res = lab_no_agents.cli(*lab_no_agents.up_args("--nodes", "1", "--no-agents"))
    assert res.returncode == 1
    assert "a lab already exists" in res.stderr and "meshcrypt lab down" in res.stderr
    assert lab_no_agents.state().config.nodes == 2  # untouched
