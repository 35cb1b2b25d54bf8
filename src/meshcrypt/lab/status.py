"""What `lab up` prints at the end and `lab status` prints any time."""

from __future__ import annotations

from collections.abc import Sequence

from meshcrypt.adapters import lab_etcd
from meshcrypt.lab.agents import NodeView, observe, problems
from meshcrypt.lab.config import WIREGUARD_IFACE
from meshcrypt.lab.down import lab_command
from meshcrypt.lab.state import LabState
from meshcrypt.lab.text import table
from meshcrypt.model.errors import MeshcryptError
from meshcrypt.model.net import IPFamily


def _families(state: LabState) -> str:
    return " + ".join(f.label for f in state.config.families)


def header(state: LabState) -> list[str]:
    config = state.config
    lines = [
        f"lab in {state.dir} (prefix {config.prefix}, created {state.created}): "
        f"{len(state.nodes)} node(s), {len(state.pods)} pod(s), {_families(state)}, "
        f"{config.backend} WireGuard"
        + (", host encryption" if config.host_encryption else "")
        + ("" if config.agents else ", no agents")
    ]
    if state.etcd is not None:
        running = state.etcd.process is not None and state.etcd.process.running()
        health = "healthy" if running and lab_etcd.healthy(state.etcd.host_endpoint) else "DOWN"
        pid = state.etcd.process.pid if state.etcd.process else "-"
        lines.append(
            f"etcd pid {pid} {health}: {state.etcd.host_endpoint} (host), "
            f"{state.etcd.node_endpoint} (nodes)"
        )
    return lines


def node_rows(state: LabState, views: Sequence[NodeView] | None) -> list[str]:
    """A row per node; the agent, key and peer columns only with `views` (what was observed)."""
    by_name = {v.name: v for v in views or ()}
    families = state.config.families
    observed = ["AGENT", "KEY", "PEERS", "HANDSHAKES"] if views is not None else []
    rows = [["NODE", "UNDERLAY", "BLOCKS", *observed, "PODS"]]
    for node in state.nodes:
        cells = [node.name, " ".join(node.addresses), " ".join(node.blocks)]
        view = by_name.get(node.name)
        if view is not None:
            cells += [
                _agent(view),
                " ".join(_key(view, f) for f in families),
                " ".join(_peers(view, f, len(state.nodes) - 1) for f in families),
                " ".join(_handshakes(view, f) for f in families),
            ]
        rows.append([*cells, str(len(state.pods_of(node.name)))])
    return table(rows)


def _agent(view: NodeView) -> str:
    if view.agent is None:
        return "not started"
    if not view.agent_running:
        return f"pid {view.agent.pid} EXITED"
    readiness = {True: " ready", False: " NOT READY", None: ""}[view.ready]
    return f"pid {view.agent.pid}{readiness}"


def _key(view: NodeView, family: IPFamily) -> str:
    published = view.published(family)
    device = view.devices.get(family)
    if not published:
        return "missing"
    if device is not None and device.public_key != published:
        return "MISMATCH"
    return "published"


def _peers(view: NodeView, family: IPFamily, expected: int) -> str:
    device = view.devices.get(family)
    return "no device" if device is None else f"{len(device.handshakes)}/{expected}"


def _handshakes(view: NodeView, family: IPFamily) -> str:
    device = view.devices.get(family)
    return "-" if device is None else str(sum(1 for t in device.handshakes.values() if t))


def pod_rows(state: LabState) -> list[str]:
    rows = [["POD", "NODE", "ADDRESSES", "HOST INTERFACE", "NETNS"]]
    rows += [[p.name, p.node, " ".join(p.addresses), p.ifname, p.netns] for p in state.pods]
    return table(rows)


def status(state: LabState) -> tuple[list[str], bool]:
    """The status report, and whether the lab is healthy (agents converged, when it has any)."""
    lines = header(state)
    try:
        views: list[NodeView] | None = observe(state)
    except MeshcryptError as exc:
        lines.append(f"cannot read the datastore: {exc}")
        views = None
    lines += ["", *node_rows(state, views), "", *pod_rows(state)]
    healthy = views is not None
    if views is not None and state.config.agents:
        issues = problems(views, state.config.families, {v.name: v for v in views})
        lines.append("")
        if issues:
            healthy = False
            lines.append("not converged:")
            lines += [f"  {name}: {'; '.join(found)}" for name, found in sorted(issues.items())]
        else:
            ifaces = ", ".join(WIREGUARD_IFACE[f] for f in state.config.families)
            lines.append(f"converged: every node's {ifaces} has a peer for every other node")
    return lines, healthy


def summary(state: LabState) -> list[str]:
    """The end of `lab up`: what there is and what to do with it."""
    first = state.nodes[0].name
    views = observe(state) if state.config.agents else None
    lines = ["", *header(state), "", *node_rows(state, views), ""]
    if state.pods:
        lines += [*pod_rows(state), ""]
    assert state.etcd is not None
    node = lab_command(state.dir, f"exec {first} --")
    steps = [
        [lab_command(state.dir, "status"), "agents, keys, peers, pods"],
        [lab_command(state.dir, "ping"), "every pod pings a pod on every other node"],
        [
            lab_command(state.dir, f"capture {first}"),
            f"is pod traffic on {first}'s wire encrypted?",
        ],
        [f"{node} wg show", f"any command inside {first} (or a pod)"],
        [lab_command(state.dir, f"restart-agent {first}"), "the agent adopts the running device"],
        [f"ETCD_ENDPOINTS={state.etcd.host_endpoint} meshcrypt …", "commands on the host"],
        [lab_command(state.dir, "down"), "removes everything"],
    ]
    return [*lines, "next:", *("  " + line for line in table(steps))]
