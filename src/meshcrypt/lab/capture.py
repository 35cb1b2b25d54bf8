"""`lab capture <node>`: watch a node's underlay while pods talk, and say whether it was encrypted.

tcpdump runs inside the node on `eth0` (its underlay) and writes to `<lab dir>/capture-<node>.pcap`;
meanwhile the node's pods ping the first pod of every other node and those ping back. Then the
capture is sorted (`pcap.classify`): WireGuard, plaintext pod traffic, other. Any plaintext pod packet
means pod traffic crossed the wire unencrypted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshcrypt.adapters import lab_proc
from meshcrypt.lab import ping
from meshcrypt.lab.config import POOLS, LabError
from meshcrypt.lab.nodes import sim_node
from meshcrypt.lab.pcap import Classification, PcapError, classify
from meshcrypt.lab.state import LabState
from meshcrypt.model.net import CIDR

Say = Callable[[str], None]
SNAPLEN = 256  # headers and the start of the payload are all the classification reads


@dataclass
class CaptureReport:
    node: str
    pcap: Path
    seconds: float
    pings: list[ping.PingResult]
    packets: Classification

    @property
    def plaintext(self) -> bool:
        return self.packets.plaintext_pod > 0

    def lines(self) -> list[str]:
        c = self.packets
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(c.wireguard_kinds.items()))
        passed = sum(p.ok for p in self.pings)
        out = [
            f"captured {c.total} packet(s) on {self.node} eth0 in {self.seconds:g} s "
            f"({passed}/{len(self.pings)} ping runs passed), saved in {self.pcap}:",
            f"  WireGuard (UDP)          {c.wireguard}" + (f"  ({kinds})" if kinds else ""),
            f"  plaintext pod traffic    {c.plaintext_pod}",
            f"  other                    {c.other}  (ARP, neighbour discovery, etcd, …)",
        ]
        if c.examples:
            out.append("  plaintext examples: " + "; ".join(c.examples))
        if self.plaintext:
            out.append("FAIL: pod traffic crossed the underlay unencrypted")
        elif c.wireguard == 0:
            out.append("FAIL: no pod traffic crossed the underlay, so nothing can be said")
        else:
            out.append("ok: all pod traffic on the underlay was WireGuard")
        return out

    @property
    def ok(self) -> bool:
        return not self.plaintext and self.packets.wireguard > 0


def pod_networks(state: LabState) -> list[CIDR]:
    return [POOLS[f][1] for f in state.config.families]


def capture(state: LabState, node_name: str, seconds: float, say: Say) -> CaptureReport:
    node = state.node(node_name)
    sim = sim_node(node)
    pings = [
        p for p in ping.plan(state) if (p.source.node == node_name) != (p.target.node == node_name)
    ]
    if not pings:
        raise LabError(
            f"{node_name} has no pod traffic to capture (it needs pods, and other nodes with pods)"
        )
    for line in ping.warm_up(state):  # outside the capture: its packets are not counted
        say(line)
    pcap = state.dir / f"capture-{node_name}.pcap"
    # --immediate-mode: without it packets wait in the kernel's ring for up to a second, and
    # those still waiting when tcpdump is stopped are never written.
    cmd = [*sim.nsenter_prefix, "tcpdump", "-i", "eth0", "-n", "--immediate-mode", "-U"]
    cmd += ["-s", str(SNAPLEN), "-w", "-"]
    try:
        tcpdump = lab_proc.Background(cmd, pcap)
    except OSError as exc:
        raise LabError(f"cannot run tcpdump: {exc}") from exc
    if not tcpdump.wait_for_stderr("listening on", timeout=10):
        raise LabError(f"tcpdump did not start: {tcpdump.stop().strip()}")
    say(f"capturing on {node_name} eth0 for {seconds:g} s while {len(pings)} ping run(s) go on")
    count = max(1, int(seconds / ping.INTERVAL))
    try:
        done = lab_proc.run_many(
            [ping.command(p, count, deadline=seconds) for p in pings], timeout=seconds + 10
        )
    finally:
        tcpdump.stop()
    results = [ping.result(p, count, d) for p, d in zip(pings, done, strict=True)]
    try:
        packets = classify(pcap.read_bytes(), pod_networks(state))
    except (OSError, PcapError) as exc:
        raise LabError(f"cannot read the capture {pcap}: {exc}") from exc
    return CaptureReport(node_name, pcap, seconds, results, packets)
