"""The lab issue's end-to-end proof: a 3-node lab encrypts every pod pair, an agent restart costs no
more than a second of a running ping, the operator commands explain the lab (status, node list,
doctor — including a failure the test provokes and its hint), and `lab down` leaves nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from tests.lab.conftest import LabFactory, LabUnderTest, assert_no_leftovers, counted

pytestmark = pytest.mark.integration

PING_INTERVAL = 0.1  # seconds: 10 echoes lost = 1 s of loss


def host_cli(lab: LabUnderTest, *args: str) -> subprocess.CompletedProcess[str]:
    """`meshcrypt ARGS` on the host, against the lab's etcd."""
    state = lab.state()
    assert state.etcd is not None
    return subprocess.run(
        [sys.executable, "-m", "meshcrypt", *args, "--etcd-endpoints", state.etcd.host_endpoint],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lost_echoes(output: str) -> tuple[int, int]:
    """(transmitted, received) from ping's summary line."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert m, output
    return int(m[1]), int(m[2])


def test_three_node_lab_end_to_end(make_lab: LabFactory) -> None:
    lab = make_lab()
    res = lab.up("--nodes", "3", "--pods-per-node", "1", "--timeout", "90")
    assert res.returncode == 0, res.stdout + res.stderr
    state = lab.state()
    pods = {p.node: p for p in state.pods}

    # Warm up each pair in one direction first (see test_lab_agents: the first-handshake race),
    # then the whole matrix: every pod reaches a pod on every other node.
    for a in ("node1", "node2", "node3"):
        for b in ("node1", "node2", "node3"):
            if a < b:
                res = lab.cli("exec", pods[a].name, "--", "ping", "-n", "-c", "1", "-w", "20",
                              pods[b].addresses[0])  # fmt: skip
                assert res.returncode == 0, res.stdout + res.stderr
    res = lab.cli("ping", "--count", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "6/6 pings passed" in res.stdout, res.stdout

    res = lab.cli("capture", "node1", "--seconds", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert counted(res.stdout, "plaintext pod traffic") == 0
    assert counted(res.stdout, "WireGuard (UDP)") > 0

    # An agent restart under a running ping: at most one second of echoes lost.
    ping = subprocess.Popen(
        [sys.executable, "-m", "meshcrypt", "lab", "exec", "--dir", str(lab.dir), pods["node1"].name,
         "--", "ping", "-n", "-i", str(PING_INTERVAL), "-c", "80", "-W", "1", pods["node2"].addresses[0]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(2)
    res = lab.cli("restart-agent", "node2")
    assert res.returncode == 0, res.stdout + res.stderr
    out, _ = ping.communicate(timeout=60)
    sent, received = lost_echoes(out)
    assert sent - received <= round(1 / PING_INTERVAL), out

    # The operator commands explain the lab.
    res = lab.cli("exec", "node1", "--", "meshcrypt", "status", "--json")
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    text = json.dumps(status)
    for other in ("node2", "node3"):
        assert f'"{other}"' in text, text[:2000]
    res = lab.cli("exec", "node1", "--", "meshcrypt", "status")
    assert res.returncode == 0 and "node2" in res.stdout and "node3" in res.stdout, res.stdout
    private = lab.cli("exec", "node1", "--", "wg", "show", "wireguard.cali", "private-key").stdout
    assert private.strip() and private.strip() not in res.stdout + text

    res = host_cli(lab, "node", "list")
    assert res.returncode == 0, res.stdout + res.stderr
    for node in state.nodes:
        assert node.name in res.stdout
        for block in node.blocks:
            assert block in res.stdout, res.stdout

    res = lab.cli("exec", "node1", "--", "meshcrypt", "doctor")
    assert res.returncode == 0, res.stdout + res.stderr

    # Provoke a failure: node2's block vanishes from node1's table 1. Doctor names it with a hint.
    block2 = state.node("node2").blocks[0]
    lab.cli("exec", "node1", "--", "ip", "route", "del", block2, "table", "1")
    res = lab.cli("exec", "node1", "--", "meshcrypt", "doctor")
    assert res.returncode == 1, res.stdout + res.stderr
    assert block2 in res.stdout, res.stdout
    assert "hint: the agent repairs this at its next resync" in res.stdout, res.stdout

    res = lab.down()
    assert res.returncode == 0, res.stdout + res.stderr
    assert_no_leftovers(lab)
