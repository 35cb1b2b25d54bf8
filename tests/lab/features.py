"""Helpers for the lab feature tests (`test_lab_features.py`): reach into a lab node, capture its
underlay, change the cluster's configuration as an operator would, and say what the nodes hold when
a test fails.

The underlay capture and its classification, the polling and the "reboot" of a node are the agent
tests' own (`tests/integration/cluster.py`); here they are pointed at a lab's nodes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshcrypt.adapters.nodens import SimNode
from meshcrypt.lab.config import WIREGUARD_IFACE
from meshcrypt.lab.nodes import prefix_for, sim_node
from meshcrypt.lab.state import LabState
from meshcrypt.model.net import IPFamily
from tests.integration.cluster import AgentNode, wait_for
from tests.integration.cluster import captured as capture_underlay
from tests.lab.conftest import LabUnderTest

IFACE = WIREGUARD_IFACE[IPFamily.V4]
IFACE6 = WIREGUARD_IFACE[IPFamily.V6]
RULE = "99:\tnot from all fwmark 0x100000/0x100000 lookup 1"
#: What the lab writes at the top of each agent run in `agent-<node>.log`.
AGENT_START = "---- meshcrypt lab: agent of "


def sim(lab: LabUnderTest, node: str) -> SimNode:
    return sim_node(lab.state().node(node))


def sh(lab: LabUnderTest, node: str, *cmd: str, check: bool = True) -> str:
    """Run `cmd` in a node (its network and mount namespaces); its stdout."""
    return sim(lab, node).run(*cmd, check=check)


def run_in(
    lab: LabUnderTest, target: str, *cmd: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in a node or a pod, as `lab exec` does; never raises for its exit status."""
    full = [*prefix_for(lab.state(), target), *cmd]
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)


def address(lab: LabUnderTest, name: str, version: int = 4) -> str:
    """The underlay address (without prefix length) of a node, or the address of a pod."""
    state = lab.state()
    pod = state.find_pod(name)
    found = pod.addresses if pod is not None else state.node(name).addresses
    for text in found:
        ip = ipaddress.ip_interface(text).ip
        if ip.version == version:
            return str(ip)
    raise AssertionError(f"{name} has no IPv{version} address: {found}")


def meshcrypt(lab: LabUnderTest, *args: str) -> subprocess.CompletedProcess[str]:
    """An operator command on the host, against the lab's etcd (its loopback endpoint)."""
    etcd = lab.state().etcd
    assert etcd is not None
    cmd = [sys.executable, "-m", "meshcrypt", *args, "--etcd-endpoints", etcd.host_endpoint]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def config_set(lab: LabUnderTest, param: str, value: str) -> None:
    res = meshcrypt(lab, "config", "set", param, value)
    assert res.returncode == 0, f"config set {param} {value}:\n{res.stdout}{res.stderr}"


def agent_log(lab: LabUnderTest, node: str, *, current_run: bool = False) -> str:
    """The node's agent log; with `current_run`, only what its latest start wrote."""
    text = lab.state().agent_log(node).read_text(errors="replace")
    if current_run:
        text = text[text.rfind(AGENT_START) :]
    return text


def table1(lab: LabUnderTest, node: str, version: int = 4) -> dict[str, str]:
    """Destination (with prefix length) -> "throw" or the device, for routing table 1 in a node."""
    host = "/32" if version == 4 else "/128"
    found = {}
    out = sh(lab, node, "ip", f"-{version}", "route", "show", "table", "1")
    for line in out.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "throw":
            found[words[1] if "/" in words[1] else words[1] + host] = "throw"
        elif "dev" in words:
            dst = words[0] if "/" in words[0] else words[0] + host
            found[dst] = words[words.index("dev") + 1]
    return found


def diagnose(lab: LabUnderTest, lines: int = 40) -> str:
    """What the lab and each node hold, and the tail of each agent's log, for a failure message."""
    state = LabState.load(lab.dir)
    if state is None:
        return f"\n==== diagnostics: no lab state in {lab.dir} (lab up removed what it made)"
    out = ["", "==== diagnostics", lab.cli("status").stdout]
    for node in state.nodes:
        out.append(f"--- {node.name}")
        for cmd in (
            ["wg", "show"],
            ["ip", "-br", "link"],
            ["ip", "rule"],
            ["ip", "-6", "rule"],
            ["ip", "route", "show", "table", "1"],
            ["ip", "-6", "route", "show", "table", "1"],
        ):
            try:
                got = sh(lab, node.name, *cmd, check=False)
            except Exception as exc:  # a node that is gone must not hide the real failure
                got = f"({exc})"
            out.append(f"$ {' '.join(cmd)}\n{got.rstrip()}")
        log = agent_log(lab, node.name).splitlines()
        out += [f"--- last {lines} lines of agent-{node.name}.log", *log[-lines:]]
    return "\n".join(out)


def eventually(
    lab: LabUnderTest, what: str, check: Callable[..., Any], *args: Any, timeout: float = 30
) -> Any:
    """`wait_for`, with the lab's diagnostics in the failure."""
    try:
        return wait_for(what, check, *args, timeout=timeout, poll=0.3)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{diagnose(lab)}") from None


def assert_ok(lab: LabUnderTest, res: subprocess.CompletedProcess[str], what: str) -> None:
    if res.returncode != 0:
        raise AssertionError(
            f"{what} failed (exit {res.returncode}):\n{res.stdout}{res.stderr}{diagnose(lab)}"
        )


def agent_node(lab: LabUnderTest, node: str) -> AgentNode:
    """A lab node seen as the agent tests' `AgentNode`, for their helpers that work on its
    namespaces (capturing its underlay, losing its dataplane). Its agent stays the lab's: this
    object neither starts nor stops it."""
    state = lab.state()
    underlay = state.node(node).addresses[0].split("/")[0]
    return AgentNode(node, sim(lab, node), underlay, state.agent_log(node), {})


def captured(
    lab: LabUnderTest, node: str, path: Path
) -> contextlib.AbstractContextManager[list[str]]:
    """tcpdump on the node's eth0 (its underlay) while the block runs; the list gets the packets
    (`tcpdump -nn` lines) when it ends. Sort them with `classify_underlay`."""
    return capture_underlay(agent_node(lab, node), path)


def ping(
    lab: LabUnderTest,
    source: str,
    target: str,
    *opts: str,
    count: int = 3,
    deadline: int = 20,
    quiet: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`count` echo replies from `source` (node or pod) to `target` (an address) within `deadline`
    seconds: long enough for WireGuard to retry a first handshake (5–15 s, see `meshcrypt.lab.ping`).
    Without `quiet`, ping prints every reply and every ICMP error it gets."""
    cmd = ["ping", "-n", *(["-q"] if quiet else []), "-c", str(count), "-i", "0.2", "-W", "2"]
    cmd += ["-w", str(deadline), *opts, target]
    return run_in(lab, source, *cmd, timeout=deadline + 10)


def warm_up(lab: LabUnderTest) -> None:
    """First packets one way between every two pods on different nodes, in each family, before
    traffic in both directions (`lab ping`): when both ends start the first handshake at once,
    wireguard-go may lose one direction for longer than ping waits (see `test_lab_agents.py`).
    That is a finding about the dataplane of its own, not what these tests are about."""
    pods = lab.state().pods
    for i, source in enumerate(pods):
        for target in pods[i + 1 :]:
            if target.node == source.node:
                continue
            for to in target.addresses:
                res = ping(lab, source.name, to, count=1)
                assert_ok(lab, res, f"first packets {source.name} → {target.name} {to}")
