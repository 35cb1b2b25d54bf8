"""Agents started, restarted and reported by the lab, and `lab down` leaving nothing behind — also
after `lab up` was killed half way or its state file was lost.

A stand-in agent (MESHCRYPT_LAB_AGENT_COMMAND) behaves like the real one where it matters here: it
runs until SIGTERM and leaves a child in its own session behind, as the agent leaves wireguard-go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshcrypt.adapters.lab_proc import ProcessId
from meshcrypt.lab.state import LabState
from tests.lab.conftest import LabFactory, assert_no_leftovers

pytestmark = pytest.mark.integration

# Like the agent: a long-lived child in its own session (wireguard-go), then run until signalled.
FAKE_AGENT = """\
setsid sleep 600 </dev/null >/dev/null 2>&1 &
echo "fake agent for $NODENAME: IP=$IP ETCD_ENDPOINTS=$ETCD_ENDPOINTS"
exec sleep 600
"""
FAILING_AGENT = 'echo "fake agent of $NODENAME: giving up" >&2; exit 3\n'


def script(tmp_path: Path, name: str, text: str) -> dict[str, str]:
    path = tmp_path / name
    path.write_text(text)
    return {"MESHCRYPT_LAB_AGENT_COMMAND": f"sh {path}"}


def netns_of(pid: int) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/net")
    return st.st_dev, st.st_ino


def netns_id(name: str) -> tuple[int, int]:
    st = os.stat(f"/run/netns/{name}")
    return st.st_dev, st.st_ino


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_agents_run_in_their_nodes_and_down_removes_everything(make_lab: LabFactory, tmp_path):
    lab = make_lab()
    env = script(tmp_path, "agent.sh", FAKE_AGENT)
    res = lab.up("--nodes", "2", "--pods-per-node", "1", "--timeout", "2", env=env)
    # The stand-in never makes a WireGuard device: `up` reports who did not converge, and why.
    assert res.returncode == 1
    assert "did not converge within 2 s" in res.stderr
    assert "node1: " in res.stderr and "node2: " in res.stderr
    assert "no wireguard.cali device" in res.stderr
    assert "fake agent for node1" in res.stderr  # the tail of the agent's log
    assert "meshcrypt lab down" in res.stderr

    state = lab.state()  # the lab stays up for inspection
    for node in state.nodes:
        assert node.agent is not None and node.agent.running()
        assert netns_of(node.agent.pid) == netns_id(node.netns)
        assert os.getsid(node.agent.pid) == node.agent.pid  # its own session
        env_seen = environ(node.agent.pid)
        assert env_seen["NODENAME"] == node.name
        assert env_seen["IP"] == node.addresses[0]
        assert env_seen["IP6"] == "none"
        assert env_seen["ETCD_ENDPOINTS"] == f"http://{lab.bridge_ip()}:2379"
        assert env_seen["MESHCRYPT_WIREGUARD_BACKEND"] == "userspace"
        assert (lab.dir / f"agent-{node.name}.log").read_text().count("fake agent for") == 1

    # restart-agent: the old agent is gone, a new one runs in the same namespaces.
    old = state.node("node1").agent
    assert old is not None
    res = lab.cli("restart-agent", "node1", "--no-wait", env=env)
    assert res.returncode == 0, res.stderr
    new = lab.state().node("node1").agent
    assert new is not None and new != old and new.running() and not old.running()
    assert netns_of(new.pid) == netns_id(state.node("node1").netns)

    # An agent that exits is reported at once, with its log.
    res = lab.cli("restart-agent", "node2", env=script(tmp_path, "bad.sh", FAILING_AGENT))
    assert res.returncode == 1
    assert "the agent of node2 exited" in res.stderr
    assert "node2: agent exited with status 3" in res.stderr
    assert "fake agent of node2: giving up" in res.stderr

    lab.remember()  # the detached "wireguard-go" children included
    in_nodes = [p for p in lab.processes if p.running()]
    assert len(in_nodes) >= 5  # 2 holders, etcd, an agent, 2+ detached children
    res = lab.down()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "stopping" in res.stdout and "removed" in res.stdout
    assert_no_leftovers(lab)


def test_down_cleans_up_after_up_was_killed(make_lab: LabFactory):
    lab = make_lab()
    up = subprocess.Popen(
        [sys.executable, "-m", "meshcrypt", "lab", *lab.up_args("--nodes", "3", "--no-agents")],
        env={**os.environ, "MESHCRYPT_LAB_DIR": str(lab.dir)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    state = None
    while time.monotonic() < deadline and up.poll() is None:
        try:
            state = LabState.load(lab.dir)
        except Exception:
            state = None  # caught between writes
        if state is not None and len(state.nodes) >= 2:
            break
        time.sleep(0.01)
    up.send_signal(signal.SIGKILL)
    up.wait()
    lab.remember()
    assert os.path.exists(f"/run/netns/{lab.prefix}-node1"), "killed too early to test anything"

    res = lab.down()
    assert res.returncode == 0, res.stdout + res.stderr
    assert_no_leftovers(lab)


def test_down_without_state_file_scans_by_prefix(make_lab: LabFactory):
    lab = make_lab()
    res = lab.up("--nodes", "2", "--pods-per-node", "1", "--no-agents")
    assert res.returncode == 0, res.stderr
    etcd = lab.state().etcd
    assert etcd is not None and etcd.process is not None
    (lab.dir / "lab.json").unlink()

    res = lab.down("--prefix", lab.prefix)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no lab state" in res.stdout
    assert not ProcessId(etcd.process.pid, etcd.process.start_time).running()
    assert_no_leftovers(lab)


def test_up_refuses_leftovers_and_down_says_when_there_is_nothing(make_lab: LabFactory):
    lab = make_lab()
    subprocess.run(["ip", "netns", "add", f"{lab.prefix}-node1"], check=True)
    try:
        res = lab.up("--nodes", "1", "--no-agents")
        assert res.returncode == 1
        assert "leftovers of a lab with prefix" in res.stderr and "--prefix" in res.stderr
    finally:
        res = lab.down("--prefix", lab.prefix)
    assert res.returncode == 0
    assert not os.path.exists(f"/run/netns/{lab.prefix}-node1")
    res = lab.down("--prefix", lab.prefix)
    assert res.returncode == 0 and "no lab state" in res.stdout


def test_bad_arguments_are_refused_cleanly(make_lab: LabFactory):
    lab = make_lab()
    res = lab.cli("up", "--nodes", "2", "--prefix", "Not-OK", "--no-agents")
    assert res.returncode == 1 and "prefix 'Not-OK'" in res.stderr
    res = lab.cli("up", "--pods-per-node", "64", "--no-agents", "--prefix", lab.prefix)
    assert res.returncode == 1 and "--pods-per-node 64" in res.stderr
    res = lab.cli("status")
    assert res.returncode == 1 and "no lab in" in res.stderr
    assert not lab.dir.exists()


def test_a_failed_up_removes_what_it_made(make_lab: LabFactory, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "etcd"
    fake.write_text('#!/bin/sh\necho "fake etcd: cannot start" >&2\nexit 1\n')
    fake.chmod(0o755)
    lab = make_lab()
    res = lab.up("--nodes", "2", "--no-agents", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert res.returncode == 1
    assert "etcd exited" in res.stderr and "fake etcd: cannot start" in res.stderr
    assert "removing what was created" in res.stdout
    assert "deleted 2 network namespace(s)" in res.stdout
    assert_no_leftovers(lab)
