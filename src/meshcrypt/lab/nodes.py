"""Reaching into the lab's nodes and pods: a node is entered through its holder's namespaces
(network and mount: `nsenter -t <holder> -m -n`), a pod through its network namespace."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from meshcrypt.adapters import lab_net, lab_proc
from meshcrypt.adapters.nodens import SimNode
from meshcrypt.lab.config import LabError
from meshcrypt.lab.state import LabState, NodeRecord


def sim_node(node: NodeRecord) -> SimNode:
    """The node's namespaces, as long as its holder process (the one recorded) still runs."""
    if node.holder is None or not node.holder.running():
        raise LabError(
            f"node {node.name} is gone (its namespace holder process is not running); "
            "remove the lab with `meshcrypt lab down`"
        )
    return SimNode(node.name, node.netns, node.holder.pid)


def prefix_for(state: LabState, target: str) -> list[str]:
    """The command prefix that runs something inside node or pod `target`."""
    if target in state.node_names():
        return sim_node(state.node(target)).nsenter_prefix
    pod = state.find_pod(target)
    if pod is None:
        pods = ", ".join(p.name for p in state.pods) or "none"
        raise LabError(
            f"no node or pod named {target!r} (nodes: {', '.join(state.node_names())}; pods: {pods})"
        )
    if pod.netns not in lab_net.netns_names(pod.netns):
        raise LabError(f"pod {target} is gone (no network namespace {pod.netns})")
    return ["ip", "netns", "exec", pod.netns]


def exec_in(state: LabState, target: str, cmd: Sequence[str]) -> int:
    """Run `cmd` in node or pod `target` with our terminal; its exit status.

    In a node, NODENAME and ETCD_ENDPOINTS are the node's and this interpreter's directory leads
    PATH, so `meshcrypt status` (or `doctor`, …) run there just works.
    """
    if not cmd:
        raise LabError("no command given: `meshcrypt lab exec <node|pod> -- CMD …`")
    full = [*prefix_for(state, target), *cmd]
    env = dict(os.environ)
    if target in state.node_names() and state.etcd is not None:
        env["NODENAME"] = target
        env["ETCD_ENDPOINTS"] = state.etcd.node_endpoint
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    try:
        return lab_proc.run_attached(full, env)
    except OSError as exc:
        raise LabError(f"cannot run {' '.join(cmd)} in {target}: {exc}") from exc
