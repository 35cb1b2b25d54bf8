"""`lab ping`: every pod pings one pod (the first) on every other node, in each IP family.

The pings run concurrently, each `ping -c COUNT -w DEADLINE -i 0.2` inside the source pod's
namespace: ping keeps sending until COUNT replies came back or the deadline passed, and the run passes
with COUNT replies. Echoes lost before that are reported, not failed: when both ends of a fresh peer
start a WireGuard handshake at the same moment — which concurrent pings in both directions make
likely — wireguard-go can lose the session on one side. The handshake is then retried after
REKEY_TIMEOUT (5 s), or, when one direction keeps sending into the lost session, once nothing came
back for KEEPALIVE + REKEY_TIMEOUT (15 s). The default deadline covers that. The result is a matrix per
family: a row per source pod, a column per destination node.

That recovery is not certain, though: both ends' 15-s timers started with the same pings, so they can
fire together and collide again (seen: a node pair with no reply in either direction for the whole
20 s). So before the matrix, `warm_up` sends the first packets of every node pair one way only —
from the pair's first node in the lab's order, all pairs at once — so each pair's first handshake has
a single initiator. It says so in its output; a pair it cannot reach is reported, and the matrix
still runs.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from meshcrypt.adapters import lab_proc
from meshcrypt.lab.state import LabState, PodRecord
from meshcrypt.lab.text import table
from meshcrypt.model.net import IPFamily

INTERVAL = 0.2
#: Long enough for WireGuard's slowest recovery of a first handshake (15 s, see above).
DEADLINE = 20.0
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


@dataclass(frozen=True, slots=True)
class Ping:
    source: PodRecord
    target: PodRecord
    address: str

    @property
    def family(self) -> IPFamily:
        return IPFamily(ipaddress.ip_address(self.address).version)


@dataclass(frozen=True, slots=True)
class PingResult:
    ping: Ping
    wanted: int
    sent: int
    received: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.received >= self.wanted


def first_pods(state: LabState) -> list[PodRecord]:
    """Each node's first pod, in the lab's node order (nodes without pods left out)."""
    return [pods[0] for n in state.nodes if (pods := state.pods_of(n.name))]


def plan(state: LabState) -> list[Ping]:
    """Every pod to the first pod of every other node, per family."""
    targets = first_pods(state)
    pings = []
    for family in state.config.families:
        for source in state.pods:
            for target in targets:
                if target.node != source.node:
                    pings.append(Ping(source, target, address_of(target, family)))
    return pings


def warm_up_plan(state: LabState) -> list[Ping]:
    """One ping per node pair and family, from the first pod of the pair's first node (in the
    lab's order) to the first pod of the other: one direction only."""
    first = first_pods(state)
    return [
        Ping(source, target, address_of(target, family))
        for family in state.config.families
        for i, source in enumerate(first)
        for target in first[i + 1 :]
    ]


def warm_up(state: LabState, deadline: float = DEADLINE) -> list[str]:
    """Start every node pair's first WireGuard handshake from one side (see the module
    docstring); a line to show, and one per pair that did not answer."""
    pings = warm_up_plan(state)
    if not pings:
        return []
    results = run(pings, 1, deadline)
    return [
        f"first packets one way per node pair (so each first handshake has one initiator): "
        f"{sum(r.ok for r in results)}/{len(results)} answered",
        *failures(results, "no answer"),
    ]


def failures(results: Sequence[PingResult], label: str) -> list[str]:
    """A line for each ping run that did not get its replies."""
    return [
        f"  {label} {r.ping.source.name} → {r.ping.target.name} {r.ping.address}: "
        f"{r.error or f'{r.received} of {r.wanted} replies ({r.sent} sent)'}"
        for r in results
        if not r.ok
    ]


def address_of(pod: PodRecord, family: IPFamily) -> str:
    for address in pod.addresses:
        if ipaddress.ip_address(address).version == family.value:
            return address
    raise ValueError(f"pod {pod.name} has no {family.label} address")


def command(ping: Ping, count: int, deadline: float) -> list[str]:
    """Ping until `count` replies or `deadline` seconds (whole seconds: ping's unit)."""
    cmd = ["ip", "netns", "exec", ping.source.netns, "ping", "-n", "-q", "-c", str(count)]
    cmd += ["-i", str(INTERVAL), "-W", "2", "-w", str(max(1, math.ceil(deadline)))]
    return [*cmd, ping.address]


def run(pings: Sequence[Ping], count: int, deadline: float = DEADLINE) -> list[PingResult]:
    done = lab_proc.run_many([command(p, count, deadline) for p in pings], timeout=deadline + 10)
    return [result(p, count, d) for p, d in zip(pings, done, strict=True)]


def result(ping: Ping, wanted: int, done: lab_proc.Finished) -> PingResult:
    match = _SUMMARY.search(done.stdout)
    if match is None:
        error = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return PingResult(ping, wanted, 0, 0, error)
    return PingResult(ping, wanted, int(match.group(1)), int(match.group(2)))


def matrix(state: LabState, results: Sequence[PingResult], count: int) -> list[str]:
    """One matrix per family: rows are source pods, columns destination nodes (their first pod)."""
    lines: list[str] = []
    nodes = [n.name for n in state.nodes]
    for family in state.config.families:
        mine = {
            (r.ping.source.name, r.ping.target.node): r for r in results if r.ping.family is family
        }
        if not mine:
            continue
        targets = {r.ping.target.node: r.ping for r in mine.values()}
        header = [f"{family.label}: replies/sent", *nodes]
        rows = [header, ["", *(_target(targets.get(n)) for n in nodes)]]
        for pod in state.pods:
            rows.append([pod.name, *(_cell(mine.get((pod.name, n))) for n in nodes)])
        lines += table(rows)
        lines.append("")
    passed = sum(r.ok for r in results)
    lines.append(f"{passed}/{len(results)} pings passed (each needs {count} replies)")
    late = sum(1 for r in results if r.ok and r.sent > r.received)
    if late:
        why = (
            " (likely a first WireGuard handshake both ends started at once; WireGuard retries "
            "it within 5–15 s)"
            if state.config.agents
            else ""
        )
        lines.append(f"{late} of them lost echoes before the first reply{why}")
    lines += failures(results, "FAIL")
    return lines


def _target(ping: Ping | None) -> str:
    return "" if ping is None else f"({ping.target.name} {ping.address})"


def _cell(r: PingResult | None) -> str:
    """`ok 3/3`: replies/echoes sent (more sent than answered: the first ones were lost)."""
    if r is None:
        return "·"
    return f"{'ok' if r.ok else 'FAIL'} {r.received}/{r.sent}"
