"""Convergence when a node joins a 10-node lab (issue 7, item 3).

A lab of `--nodes` nodes (one pod each, `bench.labrun`: its own folder, prefix and underlay) comes up
with agents on all nodes but the last; once those agree, the last node joins `--joins` times:

* **join**: its agent is started (the clock starts just before). The join is done for another node
  when (1) that node's device has a peer with the new node's endpoint and its block in allowed IPs
  and table 1 routes the block through the device, (2) the new node's device and table 1 likewise
  for that node (else the first handshake goes unanswered and WireGuard retries only after 5 s),
  and (3) a ping from that node's pod to the new node's pod succeeds. Each pair is pinged one way
  only (pod of the other node -> new pod), at most one ping per pair in flight, so no simultaneous
  first handshakes. Everything is polled every 20 ms (devices through wireguard-go's UAPI socket,
  `ip route show table 1`). **Converged** = the last node done.
* **baseline**, the same join's floor inside the new node: agent start -> its own device has every
  peer and its table 1 every device route (the agent's own programming, seen by the same poll).
* **leave**, between joins: the agent is stopped, its device deleted (wireguard-go exits with it; a
  new private key next time) and its `Node` deleted from etcd; then the others drop the peer.

Needs root. The lab is removed at the end, also on Ctrl-C or SIGTERM.

    .venv/bin/python -m bench converge [--nodes 10] [--joins 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.baselines import IFACE, PORT, TABLE, uapi
from bench.labrun import lab, log, machine, machine_line, sigterm_unwinds
from meshcrypt.adapters import lab_proc
from meshcrypt.adapters.lab_proc import ProcessId
from meshcrypt.adapters.nodens import SimNode
from meshcrypt.datastore import layout
from meshcrypt.lab import agents
from meshcrypt.lab.cluster import with_datastore
from meshcrypt.lab.nodes import sim_node
from meshcrypt.lab.state import LabState, NodeRecord
from meshcrypt.ports import Datastore

POLL = 0.02
JOIN_TIMEOUT = 60.0
TARGET_P95_S = 2.0


@dataclass
class Side:
    """One node as the benchmark sees it."""

    name: str
    sim: SimNode
    address: str  # underlay, no prefix length
    block: str
    pod_netns: str
    pod_address: str


def side(state: LabState, node: NodeRecord) -> Side:
    pod = state.pods_of(node.name)[0]
    return Side(
        name=node.name,
        sim=sim_node(node),
        address=node.addresses[0].split("/")[0],
        block=node.blocks[0],
        pod_netns=pod.netns,
        pod_address=pod.addresses[0],
    )


def peers(s: Side) -> list[bytes]:
    """The device's peer sections (empty when there is no device)."""
    try:
        dump = uapi(s.sim, b"get=1\n\n")
    except OSError:
        return []
    return dump.split(b"\npublic_key=")[1:]


def has_peer(sections: list[bytes], other: Side) -> bool:
    endpoint = f"\nendpoint={other.address}:{PORT}\n".encode()
    allowed = f"\nallowed_ip={other.block}\n".encode()
    return any(endpoint in p and allowed in p for p in sections)


def table1(s: Side) -> str:
    cmd = ["ip", "-n", s.sim.netns, "-4", "route", "show", "table", str(TABLE)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


def routes(text: str, other: Side) -> bool:
    return any(
        line.startswith(f"{other.block} ") and f"dev {IFACE}" in line for line in text.splitlines()
    )


@dataclass
class Join:
    number: int
    converged_s: float
    own_programmed_s: float  # baseline: the new node's own device and table 1 complete
    pair_s: dict[str, float] = field(default_factory=dict)  # other node -> its pair done
    routed_s: dict[str, float] = field(default_factory=dict)  # both ways routed, before the ping
    pings: int = 0


def join(state: LabState, new: NodeRecord, number: int) -> Join:
    """Start the new node's agent and wait until every other node is done with it."""
    me = side(state, new)
    others = [side(state, n) for n in state.nodes if n is not new]
    pending = {o.name: o for o in others}
    pinging: dict[str, subprocess.Popen[bytes]] = {}
    result = Join(number, 0.0, 0.0)
    start = time.time()
    agents.start_agent(state, new)
    deadline = start + JOIN_TIMEOUT
    try:
        while pending or not result.own_programmed_s:
            now = time.time()
            if now > deadline:
                raise RuntimeError(
                    f"join {number}: not converged in {JOIN_TIMEOUT:g} s with "
                    f"{', '.join(sorted(pending))}; log {state.agent_log(new.name)}"
                )
            mine = peers(me)
            my_table = table1(me)
            if not result.own_programmed_s and all(
                has_peer(mine, o) and routes(my_table, o) for o in others
            ):
                result.own_programmed_s = time.time() - start
            for name, o in list(pending.items()):
                proc = pinging.get(name)
                if proc is not None:
                    code = proc.poll()
                    if code is None:
                        continue
                    del pinging[name]
                    if code == 0:
                        result.pair_s[name] = time.time() - start
                        del pending[name]
                        continue
                if name not in result.routed_s:
                    if not (has_peer(mine, o) and routes(my_table, o)):
                        continue
                    if not (has_peer(peers(o), me) and routes(table1(o), me)):
                        continue
                    result.routed_s[name] = time.time() - start
                cmd = ["ip", "netns", "exec", o.pod_netns, "ping", "-n", "-q", "-c", "1"]
                pinging[name] = subprocess.Popen(
                    [*cmd, "-W", "1", me.pod_address],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                result.pings += 1
            time.sleep(POLL)
    finally:
        for proc in pinging.values():
            proc.kill()
            proc.wait()
    result.converged_s = max(result.pair_s.values())
    return result


def leave(state: LabState, node: NodeRecord) -> None:
    """Stop the agent, delete the device (and so wireguard-go) and the Node; wait until the others
    have dropped the peer."""
    agents.stop_agent(state, node)
    sim = sim_node(node)
    sim.run("ip", "link", "del", IFACE, check=False)
    rest = [p for p in (ProcessId.of(pid) for pid in sim.pids() if pid != sim.holder_pid) if p]
    if rest:
        lab_proc.stop(rest, grace=5.0)

    async def delete(datastore: Datastore) -> None:
        await datastore.txn({}, {}, [layout.node_key(node.name)])

    assert state.etcd is not None
    with_datastore(state.etcd.host_endpoint, delete)
    gone = side(state, node)
    others = [side(state, n) for n in state.nodes if n is not node]
    deadline = time.time() + 30
    while any(has_peer(peers(o), gone) for o in others):
        if time.time() > deadline:
            raise RuntimeError(f"{node.name} left, but the others kept its peer for 30 s")
        time.sleep(0.1)


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (p95 of fewer than 20 values is the maximum)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))
    return ordered[int(rank) - 1]


@dataclass
class Results:
    machine: dict[str, str]
    nodes: int
    joins: list[Join] = field(default_factory=list)
    initial_converge_s: float = 0.0


def report(r: Results) -> str:
    conv = [j.converged_s for j in r.joins]
    own = [j.own_programmed_s for j in r.joins]
    routed = [max(j.routed_s.values()) for j in r.joins]
    p95 = quantile(conv, 0.95)
    row = "  {:52s}{:>10s}{:>10s}{:>10s}"
    lines = [
        f"meshcrypt convergence benchmark, {machine_line(r.machine)}",
        "",
        f"3. A node joins a {r.nodes}-node lab (userspace backend), {len(r.joins)} joins; "
        "agent start -> ...",
        row.format("", "p50", "p95", "max"),
    ]

    def line(label: str, xs: list[float]) -> str:
        return row.format(
            label,
            f"{statistics.median(xs):.2f} s",
            f"{quantile(xs, 0.95):.2f} s",
            f"{max(xs):.2f} s",
        )

    lines += [
        line("every other node routes and pings (converged)", conv),
        line("  every pair routed both ways, before its ping", routed),
        line("baseline: the new node's own device + table 1", own),
        "  joins: "
        + ", ".join(f"{c:.2f}" for c in conv)
        + " s; pings sent per join: "
        + ", ".join(str(j.pings) for j in r.joins),
        "",
        "Targets",
        f"  {'met   ' if p95 <= TARGET_P95_S else 'MISSED'} join converged p95 {p95:.2f} s "
        f"(<= {TARGET_P95_S:g} s)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench converge", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--joins", type=int, default=8)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    results = Results(machine(), args.nodes)
    with sigterm_unwinds(), lab(args.nodes, agents=False) as state:
        new = state.nodes[-1]
        first = state.nodes[:-1]
        for node in first:
            agents.start_agent(state, node)
        results.initial_converge_s = agents.wait_converged(state, 180, log, nodes=first)
        log(f"{len(first)} agents converged in {results.initial_converge_s:.1f} s")
        for number in range(1, args.joins + 1):
            j = join(state, new, number)
            log(
                f"join {number}: converged {j.converged_s:.2f} s, "
                f"own device {j.own_programmed_s:.2f} s, {j.pings} pings"
            )
            results.joins.append(j)
            if number < args.joins:
                leave(state, new)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(results), indent=1) + "\n")
    return 0
