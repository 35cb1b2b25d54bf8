"""One `meshcrypt agent` per node: start it inside the node, stop it, and wait until all agree.

An agent runs as ``nsenter -t <holder> -m -n <python> -m meshcrypt agent`` in its own session, with
the node's environment (NODENAME, ETCD_ENDPOINTS, IP, IP6, MESHCRYPT_WIREGUARD_BACKEND; FELIX_*
variables of the caller pass through), its output appended to `<lab dir>/agent-<node>.log`.

Converged means, for every node and enabled family: its agent runs, its public key is published in
its Node resource and is the key of its device, and the device's peers are exactly the published
keys of the other nodes — so with N nodes, N−1 peers each. The check reads devices with
`wg show <iface> public-key` and `latest-handshakes`, never `dump` (which prints the private key).
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshcrypt.adapters import lab_net, lab_proc
from meshcrypt.adapters.lab_proc import ProcessId
from meshcrypt.adapters.nodens import SimNode
from meshcrypt.lab.cluster import read_nodes, with_datastore
from meshcrypt.lab.config import AGENT_COMMAND_ENV, WIREGUARD_IFACE, LabError
from meshcrypt.lab.nodes import sim_node
from meshcrypt.lab.state import LabState, NodeRecord
from meshcrypt.model.net import IPFamily
from meshcrypt.model.resources import NodeResource

Say = Callable[[str], None]
POLL = 0.5
# Variables of the caller an agent must not inherit: its state directory must stay the node's own
# (/run/meshcrypt is private to each node's mount namespace).
_NOT_INHERITED = ("MESHCRYPT_STATE_DIR", AGENT_COMMAND_ENV)


def agent_command() -> list[str]:
    override = os.environ.get(AGENT_COMMAND_ENV, "").split()
    return override or [sys.executable, "-m", "meshcrypt", "agent"]


def agent_environment(state: LabState, node: NodeRecord) -> dict[str, str]:
    assert state.etcd is not None
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    by_family = dict(zip(state.config.families, node.addresses, strict=True))
    # The health endpoint tells a running agent from a ready one (synced, dataplane applied).
    env.setdefault("FELIX_HEALTHENABLED", "true")
    env.update(
        NODENAME=node.name,
        DATASTORE_TYPE="etcdv3",
        ETCD_ENDPOINTS=state.etcd.node_endpoint,
        IP=by_family.get(IPFamily.V4, "none"),
        IP6=by_family.get(IPFamily.V6, "none"),
        MESHCRYPT_WIREGUARD_BACKEND=state.config.backend,
        PYTHONUNBUFFERED="1",
    )
    return env


def start_agent(state: LabState, node: NodeRecord) -> ProcessId:
    """Start the node's agent and record it (the state is saved)."""
    sim = sim_node(node)
    log_path = state.agent_log(node.name)
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    with log_path.open("a") as log:
        log.write(f"---- meshcrypt lab: agent of {node.name} starting at {stamp} ----\n")
    env = agent_environment(state, node)
    try:
        proc = lab_proc.spawn([*sim.nsenter_prefix, *agent_command()], env=env, log_path=log_path)
    except OSError as exc:
        raise LabError(f"cannot start the agent of {node.name}: {exc}") from exc
    node.agent = proc
    node.health_port = health_port(env)
    state.save()
    return proc


def stop_agent(state: LabState, node: NodeRecord, grace: float = 10.0) -> None:
    """SIGTERM the node's agent (SIGKILL after `grace` s). wireguard-go, in its own session, stays."""
    if node.agent is not None:
        survivors = lab_proc.stop([node.agent], grace)
        if survivors:
            raise LabError(f"the agent of {node.name} (pid {node.agent.pid}) does not stop")
    node.agent = None
    state.save()


def health_port(env: Mapping[str, str]) -> int | None:
    """The port of an agent's health endpoint given its environment; None when it is off."""
    if env.get("FELIX_HEALTHENABLED", "").strip().lower() not in ("true", "1", "yes"):
        return None
    try:
        return int(env.get("FELIX_HEALTHPORT", "9099"))
    except ValueError:
        return None


def log_tail(path: Path, lines: int = 12) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return text.rstrip("\n").splitlines()[-lines:]


# ---- observing -----------------------------------------------------------------------------------


@dataclass
class Device:
    public_key: str
    handshakes: dict[str, int]  # peer public key -> latest handshake (epoch s, 0 = never)


@dataclass
class NodeView:
    """What can be seen of one node: its agent, its Node resource, its devices."""

    name: str
    agent: ProcessId | None
    agent_running: bool
    resource: NodeResource | None
    devices: dict[IPFamily, Device | None] = field(default_factory=dict)
    #: The agent's /readiness: True (200), False (anything else, or no answer), None (not asked:
    #: no agent running, or its health endpoint is off).
    ready: bool | None = None
    #: How the agent ended, when it was our child and has ended (else None).
    exit_status: int | None = None

    def published(self, family: IPFamily) -> str:
        if self.resource is None:
            return ""
        key = self.resource.public_key if family is IPFamily.V4 else self.resource.public_key_v6
        return "" if key is None else str(key)


def read_device(sim: SimNode, iface: str) -> Device | None:
    """The device's public key and peers, or None when the node has no such device."""
    script = 'wg show "$1" public-key && wg show "$1" latest-handshakes'
    done = lab_proc.run([*sim.nsenter_prefix, "sh", "-c", script, "sh", iface], timeout=10)
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines:
        return None
    handshakes: dict[str, int] = {}
    for line in lines[1:]:
        key, _, when = line.partition("\t")
        if key:
            handshakes[key] = int(when) if when.strip().isdigit() else 0
    return Device(lines[0].strip(), handshakes)


def observe(state: LabState, nodes: Sequence[NodeRecord] | None = None) -> list[NodeView]:
    """Agents, Node resources and devices of `nodes` (default: all)."""
    assert state.etcd is not None
    resources = with_datastore(state.etcd.host_endpoint, read_nodes)
    views = []
    for node in state.nodes if nodes is None else nodes:
        # The exit status first: checking whether it runs would reap it without one.
        ended = None if node.agent is None else lab_proc.exit_status(node.agent)
        running = ended is None and node.agent is not None and node.agent.running()
        view = NodeView(node.name, node.agent, running, resources.get(node.name))
        view.exit_status = ended
        try:
            sim = sim_node(node)
        except LabError:
            sim = None
        if running and node.health_port is not None:
            answer = lab_net.http_status_in_netns(node.netns, node.health_port, "/readiness")
            view.ready = answer == 200
        for family in state.config.families:
            view.devices[family] = (
                None if sim is None else read_device(sim, WIREGUARD_IFACE[family])
            )
        views.append(view)
    return views


def problems(
    views: Sequence[NodeView], families: Sequence[IPFamily], published: Mapping[str, NodeView]
) -> dict[str, list[str]]:
    """What keeps each node in `views` from having converged (nodes without problems are left out).

    `published` holds the views of every node of the lab, for the keys its peers must be.
    """
    found: dict[str, list[str]] = {}
    for view in views:
        issues: list[str] = []
        if view.agent is None:
            issues.append("no agent started")
        elif view.exit_status is not None:
            issues.append(f"agent exited with status {view.exit_status}")
        elif not view.agent_running:
            issues.append("agent not running")
        elif view.ready is False:
            issues.append("agent not ready")
        if view.resource is None:
            issues.append("Node resource not registered")
        for family in families:
            iface = WIREGUARD_IFACE[family]
            key = view.published(family)
            device = view.devices.get(family)
            if not key:
                issues.append(f"no {family.label} public key published")
            if device is None:
                issues.append(f"no {iface} device")
                continue
            if key and device.public_key != key:
                issues.append(f"{iface} key differs from the published key")
            others = [v.published(family) for n, v in published.items() if n != view.name]
            expected = {k for k in others if k}
            have = set(device.handshakes)
            if have != expected:
                unknown = len(have - expected)
                issues.append(
                    f"{iface} has {len(have & expected)}/{len(others)} peers"
                    + (f" and {unknown} unknown" if unknown else "")
                )
        if issues:
            found[view.name] = issues
    return found


def wait_converged(
    state: LabState,
    timeout: float,
    say: Say,
    nodes: Sequence[NodeRecord] | None = None,
) -> float:
    """Poll until `nodes` (default: all) have converged; the seconds it took.

    Fails early when an agent exits. The error names each node that did not converge, why, and the
    tail of its agent's log.
    """
    waiting_for = list(state.nodes if nodes is None else nodes)
    start = time.monotonic()
    deadline = start + timeout
    last_report = start
    while True:
        views = observe(state)
        by_name = {v.name: v for v in views}
        mine = [by_name[n.name] for n in waiting_for]
        issues = problems(mine, state.config.families, by_name)
        if not issues:
            return time.monotonic() - start
        exited = [v.name for v in mine if not v.agent_running]
        now = time.monotonic()
        if exited or now > deadline:
            why = (
                f"the agent of {', '.join(exited)} exited"
                if exited
                else f"the agents did not converge within {timeout:g} s"
            )
            raise LabError(_failure(state, why, issues))
        if now - last_report >= 10:
            say(
                f"still waiting ({now - start:.0f} s): "
                + "; ".join(f"{name}: {', '.join(found)}" for name, found in sorted(issues.items()))
            )
            last_report = now
        time.sleep(POLL)


def _failure(state: LabState, why: str, issues: Mapping[str, list[str]]) -> str:
    lines = [f"{why}:"]
    for name, found in sorted(issues.items()):
        lines.append(f"  {name}: {'; '.join(found)}")
        log_path = state.agent_log(name)
        tail = log_tail(log_path)
        if tail:
            lines.append(f"    last lines of {log_path}:")
            lines += [f"      {line}" for line in tail]
    lines.append(
        "the lab stays up for inspection: `meshcrypt lab status`, `meshcrypt lab exec <node> -- …`; "
        "remove it with `meshcrypt lab down`"
    )
    return "\n".join(lines)


def restart_agent(state: LabState, name: str, say: Say, *, wait: bool, timeout: float) -> None:
    """Stop the node's agent (SIGTERM) and start it again in the same namespaces; with `wait`,
    until the node has converged again."""
    node = state.node(name)
    if node.agent is not None and node.agent.running():
        say(f"{name}: stopping agent pid {node.agent.pid}")
    stop_agent(state, node)
    proc = start_agent(state, node)
    say(f"{name}: agent pid {proc.pid}, log {state.agent_log(name)}")
    if wait:
        took = wait_converged(state, timeout, say, nodes=[node])
        say(f"{name}: converged in {took:.1f} s")
