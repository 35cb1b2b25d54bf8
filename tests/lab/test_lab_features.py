"""Each WireGuard feature proven in the lab, on real packets: host encryption (and the reboot
bootstrap under it), IPv6-only and dual stack, MTU following the underlay, keepalive and threaded
NAPI on wireguard-go.

The same features are tested on the agent tests' simpler cluster (`tests/integration/
test_agent_host_encryption.py`, `test_agent_ipv6.py`, `test_agent_tuning.py`); here they run in the
lab that `meshcrypt lab up` builds — pods wired as Calico's CNI plugin wires them, BIRD-like routes,
etcd on the bridge — and are driven the way an operator would: `meshcrypt lab …` and
`meshcrypt config set` from the host. Every lab has 2 or 3 nodes with one pod each. A failure prints
what the nodes hold (devices, rules, table 1) and the tail of every agent's log.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from meshcrypt.datastore import layout
from meshcrypt.lab import agents
from meshcrypt.lab.config import POOLS
from meshcrypt.lab.pcap import classify
from meshcrypt.model.net import IPFamily
from tests.integration.cluster import classify_underlay
from tests.integration.cluster import run as run_host
from tests.lab.conftest import LabFactory, LabUnderTest, etcd_get
from tests.lab.features import (
    IFACE,
    IFACE6,
    RULE,
    address,
    agent_log,
    agent_node,
    assert_ok,
    captured,
    config_set,
    diagnose,
    eventually,
    meshcrypt,
    ping,
    run_in,
    sh,
    table1,
    warm_up,
)

pytestmark = pytest.mark.integration

DEVICE = {4: IFACE, 6: IFACE6}
NAPI_WARNING = "threaded NAPI is not supported here"


def up(lab: LabUnderTest, *flags: str, nodes: int = 2, env: dict[str, str] | None = None) -> None:
    res = lab.up("--nodes", str(nodes), "--pods-per-node", "1", "--timeout", "60", *flags, env=env)
    assert res.returncode == 0, res.stdout + res.stderr + diagnose(lab)


def doctor(lab: LabUnderTest, node: str) -> str:
    """The project's own troubleshooting checks, run in the node; they must all pass."""
    res = lab.cli("exec", node, "--", "meshcrypt", "doctor")
    assert_ok(lab, res, f"meshcrypt doctor in {node}")
    return res.stdout


def names(lab: LabUnderTest) -> list[str]:
    return lab.state().node_names()


def device_key(lab: LabUnderTest, node: str, iface: str = IFACE) -> str:
    return sh(lab, node, "wg", "show", iface, "public-key", check=False).strip()


def peer_keys(lab: LabUnderTest, node: str, iface: str = IFACE) -> set[str]:
    return set(sh(lab, node, "wg", "show", iface, "peers", check=False).split())


def published_key(lab: LabUnderTest, node: str) -> str:
    found = etcd_get(lab, layout.node_key(node))
    assert found, f"no Node {node} in etcd"
    key = found[0][1].get("status", {}).get("wireguardPublicKey", "")
    return key if isinstance(key, str) else ""


def host_routes_encrypted(lab: LabUnderTest, nodes: list[str]) -> bool:
    """Every node routes every other node's address through WireGuard (its own key is published,
    so the agent no longer holds host routes back)."""
    return all(
        table1(lab, node).get(f"{address(lab, other)}/32") == IFACE
        for node in nodes
        for other in nodes
        if other != node
    )


def keepalive_everywhere(lab: LabUnderTest, seconds: int) -> bool:
    """Every node's device shows the keepalive on each of its peers (`wg show`'s own words)."""
    for node in names(lab):
        shown = sh(lab, node, "wg", "show", IFACE)
        peers = shown.count("\npeer: ")
        if not peers or shown.count(f"persistent keepalive: every {seconds} seconds") != peers:
            return False
    return True


def no_plaintext_host_traffic(lab: LabUnderTest, lines: list[str]) -> dict[str, list[str]]:
    """The capture sorted; fails if anything but WireGuard, etcd (the bridge) and link control
    (ARP, neighbour discovery) crossed the underlay."""
    etcd = [lab.bridge_ip(v) for v in (4, 6)]
    found = classify_underlay(lines, etcd)
    # IGMP membership reports (from 0.0.0.0 while eth0 has no IPv4 address yet) are link control.
    igmp = [line for line in found["other"] if ": igmp " in line]
    found["other"] = [line for line in found["other"] if line not in igmp]
    found["control"] += igmp
    assert not found["other"], "plaintext on the underlay:\n" + "\n".join(found["other"][:20])
    return found


# ---- 1. host encryption ---------------------------------------------------------------------------


def test_host_encryption_encrypts_host_traffic_and_etcd_stays_direct(
    make_lab: LabFactory, tmp_path: Path
) -> None:
    lab = make_lab()
    up(lab, "--host-encryption")
    eventually(lab, "host routes through WireGuard", host_routes_encrypted, lab, names(lab))
    n1, n2 = address(lab, "node1"), address(lab, "node2")
    pod1, pod2 = address(lab, "node1-pod1"), address(lab, "node2-pod1")
    for node, other in (("node1", "node2"), ("node2", "node1")):
        # The device carries the node's own address (no tunnel address), and the other node's
        # address is one of its peer's allowed IPs.
        assert f"inet {address(lab, node)}/32 " in sh(
            lab, node, "ip", "-4", "-o", "addr", "show", IFACE
        )
        allowed = sh(lab, node, "wg", "show", IFACE, "allowed-ips")
        assert f"{address(lab, other)}/32" in allowed, allowed

    with captured(lab, "node1", tmp_path / "node1.pcap") as lines:
        assert_ok(lab, ping(lab, "node1", n2), "host → host (node1 → node2)")
        assert_ok(lab, ping(lab, "node2", n1), "host → host (node2 → node1)")
        assert_ok(lab, ping(lab, "node1", pod2), "host → pod (node1 → node2-pod1)")
        assert_ok(lab, ping(lab, "node2", pod1), "host → pod (node2 → node1-pod1)")
        assert_ok(lab, ping(lab, "node2-pod1", n1), "pod → host (node2-pod1 → node1)")
        # etcd keeps working: an operator's change from the host reaches both agents.
        config_set(lab, "wireguardKeepAlive", "5s")
        eventually(lab, "keepalive 5 s on every node", keepalive_everywhere, lab, 5)
    found = no_plaintext_host_traffic(lab, lines)
    assert len(found["wireguard"]) >= 5 * 3 * 2, found  # 5 pings x 3 echoes x 2 directions
    # The bridge floods frames to addresses it has not learnt (or has aged out) to every port, so
    # node1's capture may also hold a few of node2's etcd packets: only node1's own count here.
    ours = [line for line in found["etcd"] if f"{n1}." in line]
    assert ours, f"the change reached node1's agent directly from etcd: {found['etcd']}"
    assert all(f"{n2}." in line for line in found["etcd"] if line not in ours), found["etcd"]
    assert "IPv4 address      device address: " + n1 in doctor(lab, "node1")


# ---- 2. the reboot bootstrap under host encryption -----------------------------------------------


def reboot_dataplane(lab: LabUnderTest, node: str) -> None:
    """What a reboot of `node` loses, with its agent stopped: wireguard-go (and with it the device
    and its private key), table 1, the rule, the nftables table and /run."""
    state = lab.state()
    agents.stop_agent(state, state.node(node))
    agent_node(lab, node).lose_dataplane()


def test_a_rebooted_node_rejoins_with_a_new_key(make_lab: LabFactory, tmp_path: Path) -> None:
    lab = make_lab()
    up(lab, "--host-encryption", nodes=3)
    nodes = names(lab)
    eventually(lab, "host routes through WireGuard", host_routes_encrypted, lab, nodes)
    old = device_key(lab, "node1")
    assert old and old == published_key(lab, "node1")

    reboot_dataplane(lab, "node1")
    assert not device_key(lab, "node1")
    for other in ("node2", "node3"):  # the others still hold the old key, and route to it
        assert old in peer_keys(lab, other), diagnose(lab)
        assert table1(lab, other).get(f"{address(lab, 'node1')}/32") == IFACE

    res = lab.cli("restart-agent", "node1", "--timeout", "60")
    assert_ok(lab, res, "restart-agent node1 after the reboot")
    new = device_key(lab, "node1")
    assert new and new != old
    assert published_key(lab, "node1") == new

    def rejoined() -> bool:
        return all(
            new in peer_keys(lab, other) and old not in peer_keys(lab, other)
            for other in ("node2", "node3")
        ) and host_routes_encrypted(lab, nodes)

    eventually(lab, "node1 rejoins with its new key", rejoined)
    log = agent_log(lab, "node1", current_run=True)
    for said in (
        "No valid WireGuard kernel routing - removing WireGuard configuration completely",
        "Cleared IPv4 WireGuard public key from datastore",
    ):
        assert said in log, f"{said!r} not in the restarted agent's log{diagnose(lab)}"
    assert "no etcd endpoint answered" not in log  # no watchdog: etcd stayed reachable

    warm_up(lab)
    assert_ok(lab, lab.cli("ping", "--count", "2"), "lab ping after the reboot")
    with captured(lab, "node1", tmp_path / "node1.pcap") as lines:
        assert_ok(lab, ping(lab, "node1", address(lab, "node3")), "host → host after the reboot")
        assert_ok(lab, ping(lab, "node2", address(lab, "node1-pod1")), "host → pod, to node1")
        assert_ok(lab, ping(lab, "node1-pod1", address(lab, "node2-pod1")), "pod → pod")
    found = no_plaintext_host_traffic(lab, lines)
    assert len(found["wireguard"]) >= 3 * 3 * 2, found
    for node in nodes:
        doctor(lab, node)


# ---- 3. IPv6 only and dual stack ------------------------------------------------------------------


def block(lab: LabUnderTest, node: str, version: int) -> str:
    (found,) = [b for b in lab.state().node(node).blocks if (":" in b) == (version == 6)]
    return found


@pytest.mark.parametrize(
    ("flag", "versions"), [("--ipv6", (6,)), ("--dual-stack", (4, 6))], ids=["ipv6", "dual-stack"]
)
def test_pod_traffic_of_each_family_is_encrypted(
    make_lab: LabFactory, tmp_path: Path, flag: str, versions: tuple[int, ...]
) -> None:
    lab = make_lab()
    up(lab, flag)
    for node, other in (("node1", "node2"), ("node2", "node1")):
        for version in versions:
            rule = sh(lab, node, "ip", f"-{version}", "rule", "show", "pref", "99").strip()
            assert rule == RULE, diagnose(lab)
            kinds = table1(lab, node, version)
            assert kinds.get(block(lab, other, version)) == DEVICE[version], diagnose(lab)
            assert kinds.get(block(lab, node, version)) == "throw", diagnose(lab)
        if versions == (6,):
            assert not sh(lab, node, "ip", "-4", "rule", "show", "pref", "99").strip()
            assert not device_key(lab, node, IFACE)
    # Felix's FV check of the IPv6 table, word for word (metric 1024 is IPv6's default).
    table = sh(lab, "node1", "ip", "-6", "route", "show", "table", "1")
    assert f"{block(lab, 'node2', 6)} dev {IFACE6} metric 1024 pref medium" in table, table

    pcap = tmp_path / "node1.pcap"
    warm_up(lab)
    with captured(lab, "node1", pcap) as lines:
        assert_ok(lab, lab.cli("ping", "--count", "3"), "lab ping")
    # The lab's own classifier (by parsing the frames): no pod address in the clear.
    packets = classify(pcap.read_bytes(), [POOLS[IPFamily(v)][1] for v in versions])
    assert packets.plaintext_pod == 0, packets.examples
    found = no_plaintext_host_traffic(lab, lines)
    # Each family's pod traffic went through its own device: 2 pings x 3 echoes x 2 directions.
    wireguard = found["wireguard"]
    if 4 in versions:
        v4 = [line for line in wireguard if " IP " in line]
        assert len(v4) >= 12 and all(".51820 " in line for line in v4), wireguard
    v6 = [line for line in wireguard if " IP6 " in line]
    assert len(v6) >= 12 and all(".51821 " in line for line in v6), wireguard


# ---- 4. MTU follows the underlay ------------------------------------------------------------------

#: IP + ICMP header bytes in front of ping's payload.
ICMP_HEADERS = {4: 20 + 8, 6: 40 + 8}
#: What WireGuard adds to a packet inside the UDP payload: 16 bytes of header, 16 of tag.
WIREGUARD_DATA = 32


def set_mtu(lab: LabUnderTest, mtu: int, *, pods: bool = False) -> None:
    """The underlay (the bridge, both ends of every node's veth into it) or, with `pods`, both ends
    of every pod's veth."""
    state = lab.state()
    if pods:
        for pod in state.pods:
            sh(lab, pod.node, "ip", "link", "set", pod.ifname, "mtu", str(mtu))
            res = run_in(lab, pod.name, "ip", "link", "set", "eth0", "mtu", str(mtu))
            assert res.returncode == 0, res.stderr
        return
    for node in state.nodes:
        run_host("ip", "link", "set", node.host_ifname, "mtu", str(mtu))
        sh(lab, node.name, "ip", "link", "set", "eth0", "mtu", str(mtu))
    run_host("ip", "link", "set", state.config.bridge, "mtu", str(mtu))


def device_mtus(lab: LabUnderTest) -> dict[str, tuple[int, int]]:
    """Each node's (wireguard.cali, wg-v6.cali) MTU."""
    found = {}
    for node in names(lab):
        mtus = []
        for iface in (IFACE, IFACE6):
            out = sh(lab, node, "ip", "-o", "link", "show", iface, check=False)
            match = re.search(r" mtu (\d+) ", out)
            mtus.append(int(match.group(1)) if match else 0)
        found[node] = (mtus[0], mtus[1])
    return found


def device_mtus_are(lab: LabUnderTest, want: dict[str, tuple[int, int]]) -> bool:
    return device_mtus(lab) == want


def test_device_mtu_follows_the_underlay_and_bounds_pod_packets(
    make_lab: LabFactory, tmp_path: Path
) -> None:
    lab = make_lab()
    up(lab, "--dual-stack")
    set_mtu(lab, 9000, pods=True)  # the pods never are the limit: the devices are
    for underlay, mtus in ((9000, (8940, 8920)), (1500, (1440, 1420))):
        set_mtu(lab, underlay)
        want = dict.fromkeys(names(lab), mtus)
        eventually(
            lab, f"devices at {mtus} with the underlay at {underlay}", device_mtus_are, lab, want
        )
        with captured(lab, "node1", tmp_path / f"node1-{underlay}.pcap") as lines:
            for version, mtu in zip((4, 6), mtus, strict=True):
                target = address(lab, "node2-pod1", version)
                fits = mtu - ICMP_HEADERS[version]
                res = ping(lab, "node1-pod1", target, "-M", "do", "-s", str(fits), count=2)
                assert_ok(lab, res, f"IPv{version} ping of {mtu} bytes with DF (device MTU {mtu})")
                res = ping(
                    lab, "node1-pod1", target, "-M", "do", "-s", str(fits + 1),
                    count=1, deadline=5, quiet=False,
                )  # fmt: skip
                said = res.stdout + res.stderr
                assert res.returncode != 0, (
                    f"{mtu + 1} bytes with DF passed a {mtu} device:\n{said}"
                )
                # Refused by node1 when forwarding into the device (or, once that was learnt, by
                # the pod itself), naming the device's MTU.
                assert re.search(rf"mtu ?= ?{mtu}\b", said), said
        found = no_plaintext_host_traffic(lab, lines)
        for version, mtu in zip((4, 6), mtus, strict=True):
            # A packet of the device's MTU crossed the underlay whole, as one WireGuard datagram
            # that fills the underlay's MTU exactly.
            ip = " IP " if version == 4 else " IP6 "
            full = [
                line
                for line in found["wireguard"]
                if ip in line and line.endswith(f"UDP, length {mtu + WIREGUARD_DATA}")
            ]
            assert len(full) >= 4, found["wireguard"]
        report = doctor(lab, "node1")
        assert f"wireguard.cali MTU {mtus[0]} ≤ {mtus[0]} (eth0 MTU {underlay} − 60)" in report
        assert f"wg-v6.cali MTU {mtus[1]} ≤ {mtus[1]} (eth0 MTU {underlay} − 80)" in report


# ---- 5. keepalive and threaded NAPI ---------------------------------------------------------------


def full_resyncs(lab: LabUnderTest, node: str) -> int:
    """How many applies re-read and corrected the kernel (the agent's own metric, read in the node)."""
    script = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:9091/metrics', timeout=5).read().decode())"
    )
    body = sh(lab, node, sys.executable, "-c", script)
    match = re.search(r"^meshcrypt_full_resync_seconds_count (\d+)", body, re.MULTILINE)
    return int(match.group(1)) if match else 0


def test_keepalive_in_wg_show_and_napi_refusal_logged_once(make_lab: LabFactory) -> None:
    lab = make_lab()
    # Resyncs every second, so that "once" is checked over many of them.
    up(lab, env={"FELIX_ROUTEREFRESHINTERVAL": "1", "FELIX_PROMETHEUSMETRICSENABLED": "true"})
    config_set(lab, "wireguardKeepAlive", "5s")
    eventually(lab, "keepalive 5 s on every node", keepalive_everywhere, lab, 5)
    res = meshcrypt(lab, "config", "get", "wireguardKeepAlive", "--node", "node1")
    assert "5s" in res.stdout, res.stdout + res.stderr

    config_set(lab, "wireguardThreadingEnabled", "true")
    for node in names(lab):
        eventually(
            lab, f"{node} tries threaded NAPI", lambda n=node: NAPI_WARNING in agent_log(lab, n)
        )
    # More resyncs, and one more rebuild of the managers (a configuration change) on top.
    start = {node: full_resyncs(lab, node) for node in names(lab)}
    config_set(lab, "wireguardKeepAlive", "7s")
    eventually(lab, "keepalive 7 s on every node", keepalive_everywhere, lab, 7)
    for node in names(lab):
        eventually(
            lab,
            f"{node}: five more full resyncs",
            lambda n=node: full_resyncs(lab, n) >= start[n] + 5,
        )
    for node in names(lab):
        log = agent_log(lab, node)
        napi = [line for line in log.splitlines() if "NAPI" in line]
        assert log.count(NAPI_WARNING) == 1, "\n".join(napi) + diagnose(lab)
        assert sh(lab, node, "cat", f"/sys/class/net/{IFACE}/threaded").strip() == "0"
    warm_up(lab)
    assert_ok(lab, lab.cli("ping", "--count", "2"), "lab ping with keepalive and threading on")
