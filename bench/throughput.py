"""Data-plane overhead: pod-to-pod TCP throughput through the lab's tunnel (issue 7, item 4).

Paths, measured in turn (interleaved: lab, a', a'+rule, a, a-shared, b, each round starting one path
later) in each of `--rounds` rounds, so drift from background load and position hit all alike
(iperf3, TCP, one stream, `--seconds` each; the figure is the receiver's rate, the median over
the rounds):

* **lab**: a 2-node lab with agents (`bench.labrun`: its own folder, prefix and underlay), from
  node1's pod to node2's pod: pod veth -> node1 (`not fwmark` rule, table 1) -> `wireguard.cali`
  (wireguard-go) -> underlay veth -> bridge -> node2 -> pod. Pods have the tunnel's MTU.
* **(a') same-topology hand-configured tunnel** -- the fair baseline, the one the target is
  against: two node namespaces (`mcbt-n1`, `mcbt-n2`) whose `eth0`s are veths in a bridge of their
  own (`mcbt0`), like the lab's underlay, each with a pod namespace behind a veth wired as the lab
  wires pods (same MTU, proxy ARP, /32 routes), and wireguard-go configured with `wg` and `ip` only
  (no meshcrypt): plain routes to the other pod through the device in the main table, no policy
  rule. It differs from the lab only in what meshcrypt programs.
* **(a'+rule)** diagnostic: (a') with the lab's routing added by hand -- the device's fwmark
  0x100000, `not fwmark 0x100000/0x100000 lookup 1` at priority 99 and the route in table 1.
* **(a) bare hand-configured tunnel**: two namespaces (`mcbh-a`, `mcbh-b`) in a bridge of their own
  (`mcbh0`), a wireguard-go device each, the lab device's MTU; iperf3 between the tunnel addresses
  (no pods, no forwarding).
* **(a-shared)** diagnostic: (a) again (`mcbs-a`, `mcbs-b`, bridge `mcbs0`), but with wireguard-go
  started in the bench's own session instead of a session of its own.
* **(b) plain underlay**: the namespaces of (a), between their `eth0` addresses (no WireGuard).

Every baseline's wireguard-go is started as the agent starts its own: `-f`, in a session of its
own (`setsid`). On a kernel that shares CPU time out per session (`kernel.sched_autogroup_enabled`
= 1, processes in the root cgroup, as on this VM) that decides how the two cores are split between
wireguard-go and iperf3: a wireguard-go sharing the bench's session (and so iperf3's group) gets
about a fifth more throughput. (a-shared) / (a) shows that effect in every run, and the report
says which wireguard-go processes lead their own session.

Before each lab/tunnel measurement one ping is sent one way, so the handshake is done. Needs root
and iperf3. Everything is removed at the end, also on Ctrl-C or SIGTERM.

    .venv/bin/python -m bench throughput [--seconds 5] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.baselines import IFACE
from bench.labrun import lab, log, machine, machine_line, sigterm_unwinds
from bench.procstat import cpu_seconds
from meshcrypt.adapters import lab_net, lab_proc
from meshcrypt.lab.nodes import sim_node
from meshcrypt.lab.state import LabState
from meshcrypt.model.keys import PrivateKey

TARGET = 0.97
HAND = ("mcbh-a", "mcbh-b")  # namespaces, and their veths' host ends
HAND_BRIDGE = "mcbh0"
HAND_WG = ("mcbha", "mcbhb")  # wireguard-go's socket directory is shared: distinct names
UNDERLAY = ("10.211.0.1", "10.211.0.2")
TUNNEL = ("10.212.0.1", "10.212.0.2")
WG_PORT = 51820
# (a'): node namespaces (and their veths' host ends), pod namespaces, bridge, devices, addresses
TOPO_NODES = ("mcbt-n1", "mcbt-n2")
TOPO_PODS = ("mcbt-p1", "mcbt-p2")
TOPO_BRIDGE = "mcbt0"
# The lab guards its bridge against host routing with an nftables forward chain; where the host has
# br_netfilter with bridge-nf-call-iptables=1 (this VM) every bridged packet walks it. (a') gets the
# same guard, so the ratio compares meshcrypt's configuration, not the lab's host plumbing.
TOPO_GUARD = "mcbtguard"
TOPO_WG = ("mcbtn1", "mcbtn2")
TOPO_POD_IF = "calibench0"
TOPO_UNDERLAY = ("10.214.0.1", "10.214.0.2")
TOPO_POD = ("10.215.1.2", "10.215.2.2")
FWMARK = "0x100000"
RULE = ("not", "fwmark", f"{FWMARK}/{FWMARK}", "lookup", "1", "priority", "99")


def sh(*cmd: str, input: str | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, input=input, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def ping_once(prefix: Sequence[str], address: str) -> None:
    for _ in range(10):
        done = subprocess.run(
            [*prefix, "ping", "-n", "-q", "-c", "1", "-W", "1", address],
            capture_output=True,
            check=False,
        )
        if done.returncode == 0:
            return
    raise RuntimeError(f"{address} does not answer pings from {' '.join(prefix)}")


def iperf(server: Sequence[str], client: Sequence[str], address: str, seconds: float) -> float:
    """Gbit/s received by `iperf3 -s` (run with the `server` prefix) from a client."""
    srv = subprocess.Popen(
        [*server, "iperf3", "-s", "-1", "-B", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for attempt in range(50):
            done = subprocess.run(
                [*client, "iperf3", "-c", address, "-t", f"{seconds:g}", "-J"],
                capture_output=True,
                text=True,
                check=False,
            )
            doc = json.loads(done.stdout or "{}")
            received = doc.get("end", {}).get("sum_received", {}).get("bits_per_second")
            if done.returncode == 0 and received:
                return float(received) / 1e9
            if "Connection refused" not in done.stdout + done.stderr or attempt == 49:
                raise RuntimeError(f"iperf3 to {address}: {done.stdout[-300:]}{done.stderr}")
            time.sleep(0.1)  # the server is not listening yet
        raise AssertionError("unreachable")
    finally:
        srv.kill()
        srv.wait()


@dataclass(frozen=True)
class BareTunnel:
    """Names and addresses of one bare hand-configured tunnel: (a), or (a-shared)."""

    namespaces: tuple[str, str]  # also their veths' host ends
    bridge: str
    devices: tuple[str, str]  # wireguard-go's socket directory is shared: distinct names
    underlay: tuple[str, str]
    tunnel: tuple[str, str]
    own_session: bool  # start wireguard-go in a session of its own, as the agent does


BARE = BareTunnel(HAND, HAND_BRIDGE, HAND_WG, UNDERLAY, TUNNEL, own_session=True)
BARE_SHARED = BareTunnel(
    ("mcbs-a", "mcbs-b"),
    "mcbs0",
    ("mcbsa", "mcbsb"),
    ("10.216.0.1", "10.216.0.2"),
    ("10.217.0.1", "10.217.0.2"),
    own_session=False,
)


@contextlib.contextmanager
def hand_tunnel(mtu: int, seed: int, t: BareTunnel = BARE) -> Iterator[None]:
    """Two namespaces in a bridge, with a wireguard-go tunnel configured by hand; removed after."""
    rng = random.Random(seed)
    keys = [PrivateKey(rng.randbytes(32)).clamped() for _ in t.namespaces]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="mcbench-hand-") as tmp:
        try:
            sh("ip", "link", "add", t.bridge, "type", "bridge")
            sh("ip", "link", "set", t.bridge, "up")
            for i, ns in enumerate(t.namespaces):
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
                sh("ip", "link", "set", ns, "master", t.bridge, "up")
                sh("ip", "-n", ns, "addr", "add", f"{t.underlay[i]}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                _start_wireguard_go(ns, t.devices[i], procs, own_session=t.own_session)
            for i, ns in enumerate(t.namespaces):
                other = 1 - i
                key_file = Path(tmp) / f"{ns}.key"
                key_file.write_text(keys[i].to_base64() + "\n")
                wg = t.devices[i]
                sh(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "wg",
                    "set",
                    wg,
                    "private-key",
                    str(key_file),
                    "listen-port",
                    str(WG_PORT),
                    "peer",
                    keys[other].public_key().to_base64(),
                    "endpoint",
                    f"{t.underlay[other]}:{WG_PORT}",
                    "allowed-ips",
                    f"{t.tunnel[other]}/32",
                )
                sh("ip", "-n", ns, "addr", "add", f"{t.tunnel[i]}/32", "dev", wg)
                sh("ip", "-n", ns, "link", "set", wg, "mtu", str(mtu), "up")
                sh("ip", "-n", ns, "route", "add", f"{t.tunnel[other]}/32", "dev", wg)
            yield
        finally:
            _stop(procs)
            for ns in t.namespaces:
                lab_net.delete_netns(ns)
            for link in (*t.namespaces, t.bridge):
                if link in lab_net.link_names():
                    lab_net.delete_link(link)


def _start_wireguard_go(
    ns: str, name: str, procs: list[subprocess.Popen[bytes]], *, own_session: bool = True
) -> None:
    """wireguard-go in `ns`; by default in a session of its own, as the agent starts it.

    The session matters where the kernel groups CPU time by session (`kernel.sched_autogroup_enabled`
    = 1 and the processes in the root cgroup, as on this VM): a wireguard-go in its own session
    competes with iperf3 as a group of its own, and one in the bench's session shares a group
    with iperf3 — about a fifth faster here. Comparing a lab device (own session) with a baseline
    in the bench's session measured the scheduler, not meshcrypt; (a-shared) shows the effect.
    """
    procs.append(
        subprocess.Popen(
            ["ip", "netns", "exec", ns, "wireguard-go", "-f", name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=own_session,
        )
    )
    sock = Path(f"/var/run/wireguard/{name}.sock")
    deadline = time.time() + 10
    while not sock.exists():
        if time.time() > deadline:
            raise RuntimeError(f"wireguard-go {name} did not start")
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def same_topology_tunnel(mtu: int, pod_mtu: int, seed: int) -> Iterator[None]:
    """Baseline (a'): the lab's topology (node namespaces on a bridge, a pod behind a veth in each)
    with wireguard-go configured by hand and plain main-table routes; removed after."""
    rng = random.Random(seed + 1)
    keys = [PrivateKey(rng.randbytes(32)).clamped() for _ in TOPO_NODES]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="mcbench-topo-") as tmp:
        try:
            sh("ip", "link", "add", TOPO_BRIDGE, "type", "bridge")
            sh("ip", "link", "set", TOPO_BRIDGE, "up")
            lab_net.install_forward_guard(TOPO_GUARD, TOPO_BRIDGE)
            for i, ns in enumerate(TOPO_NODES):
                lab_net.create_netns(ns)
                lab_net.set_sysctls(
                    ns,
                    {
                        "net/ipv4/ip_forward": "1",
                        "net/ipv4/conf/all/rp_filter": "2",
                        "net/ipv4/conf/default/rp_filter": "2",
                    },
                )
                sh("ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
                sh("ip", "link", "set", ns, "master", TOPO_BRIDGE, "up")
                sh("ip", "-n", ns, "addr", "add", f"{TOPO_UNDERLAY[i]}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                # A default route, as the lab's nodes have: proxy ARP answers the pod's gateway
                # (169.254.1.1) only when the node has a route to it through another link.
                sh("ip", "-n", ns, "route", "add", "default", "dev", "eth0")
                lab_net.create_netns(TOPO_PODS[i])
                lab_net.attach_pod(
                    ns, TOPO_PODS[i], TOPO_POD_IF, [ipaddress.ip_address(TOPO_POD[i])], pod_mtu
                )
                _start_wireguard_go(ns, TOPO_WG[i], procs)
            for i, ns in enumerate(TOPO_NODES):
                other = 1 - i
                key_file = Path(tmp) / f"{ns}.key"
                key_file.write_text(keys[i].to_base64() + "\n")
                wg = TOPO_WG[i]
                sh(
                    *("ip", "netns", "exec", ns, "wg", "set", wg),
                    *("private-key", str(key_file), "listen-port", str(WG_PORT)),
                    *("fwmark", FWMARK, "peer", keys[other].public_key().to_base64()),
                    *("endpoint", f"{TOPO_UNDERLAY[other]}:{WG_PORT}"),
                    *("allowed-ips", f"{TOPO_POD[other]}/32"),
                )
                sh("ip", "-n", ns, "link", "set", wg, "mtu", str(mtu), "up")
                sh("ip", "-n", ns, "route", "add", f"{TOPO_POD[other]}/32", "dev", wg)
                # For the (a'+rule) variant: table 1 as the lab's, used once the rule is added.
                sh("ip", "-n", ns, "route", "add", f"{TOPO_POD[other]}/32", "dev", wg, "table", "1")
            yield
        finally:
            _stop(procs)
            for ns in (*TOPO_PODS, *TOPO_NODES):
                lab_net.delete_netns(ns)
            for link in (*TOPO_NODES, TOPO_BRIDGE):
                if link in lab_net.link_names():
                    lab_net.delete_link(link)
            if lab_net.guard_exists(TOPO_GUARD):
                lab_net.remove_forward_guard(TOPO_GUARD)


def set_rule(present: bool) -> None:
    """Add or remove the lab's `not fwmark` rule in both of (a')'s nodes."""
    for ns in TOPO_NODES:
        sh("ip", "-n", ns, "rule", "add" if present else "del", *RULE)


@dataclass
class Results:
    machine: dict[str, str]
    seconds: float
    mtu: int = 0
    pod_mtu: int = 0
    lab: list[float] = field(default_factory=list)  # Gbit/s per round
    topo: list[float] = field(default_factory=list)  # (a') same topology, plain routes
    topo_rule: list[float] = field(default_factory=list)  # (a') + the lab's rule and table 1
    hand: list[float] = field(default_factory=list)  # (a) bare tunnel
    hand_shared: list[float] = field(default_factory=list)  # (a), wireguard-go in our session
    underlay: list[float] = field(default_factory=list)  # (b)
    # CPU seconds used during each run: wireguard-go (both ends), the agents (both)
    lab_wg_cpu: list[float] = field(default_factory=list)
    lab_agent_cpu: list[float] = field(default_factory=list)
    topo_wg_cpu: list[float] = field(default_factory=list)
    hand_wg_cpu: list[float] = field(default_factory=list)
    autogroup: str = ""  # kernel.sched_autogroup_enabled
    # path -> how many of its wireguard-go processes lead a session of their own
    sessions: dict[str, str] = field(default_factory=dict)

    def note_sessions(self, **pids: Sequence[int]) -> None:
        """Record the scheduler's view: autogroup on or off, and who leads a session."""
        self.autogroup = autogroup_setting()
        self.sessions = {path: own_sessions(p) for path, p in pids.items()}


def autogroup_setting() -> str:
    """`kernel.sched_autogroup_enabled` ("1": CPU time is shared out per session), or "absent"."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return "absent"


def own_sessions(pids: Sequence[int]) -> str:
    """ "k of n": how many of `pids` lead their own session (as the agent's wireguard-go does)."""
    leaders = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            leaders += os.getsid(pid) == pid
    return f"{leaders} of {len(pids)}"


def report(r: Results) -> str:
    lab_g, topo_g, rule_g, hand_g, shared_g, plain_g = (
        statistics.median(x)
        for x in (r.lab, r.topo, r.topo_rule, r.hand, r.hand_shared, r.underlay)
    )
    sessions = ", ".join(f"{path} {count}" for path, count in r.sessions.items())
    ratio = lab_g / topo_g

    def row(label: str, xs: list[float]) -> str:
        runs = "/".join(f"{x:.2f}" for x in xs)
        return f"  {label:58s}{statistics.median(xs):>7.2f} Gbit/s   (runs {runs})"

    return "\n".join(
        [
            f"meshcrypt throughput benchmark, {machine_line(r.machine)}",
            "",
            f"4. iperf3 TCP, 1 stream, {r.seconds:g} s, median of {len(r.lab)} interleaved "
            f"rounds; WireGuard MTU {r.mtu}, pod MTU {r.pod_mtu}",
            row("lab: pod -> pod through wireguard.cali", r.lab),
            row("(a') same topology, hand-configured, plain routes", r.topo),
            row("(a'+rule) same, + not-fwmark rule and table 1 (diagnostic)", r.topo_rule),
            row("(a) bare hand-configured tunnel (no pods, no forwarding)", r.hand),
            row("(a-shared) (a), wireguard-go in the bench's session (diag.)", r.hand_shared),
            row("(b) plain underlay (veth + bridge)", r.underlay),
            f"  CPU per run: wireguard-go lab {statistics.median(r.lab_wg_cpu):.2f} s, "
            f"(a') {statistics.median(r.topo_wg_cpu):.2f} s, "
            f"(a) {statistics.median(r.hand_wg_cpu):.2f} s; "
            f"agents during the lab run {statistics.median(r.lab_agent_cpu):.2f} s",
            f"  lab / (a') {ratio:.3f}; lab / (a'+rule) {lab_g / rule_g:.3f}; "
            f"(a'+rule) / (a') {rule_g / topo_g:.3f}",
            f"  lab / (a) {lab_g / hand_g:.3f}; (a') / (a) {topo_g / hand_g:.3f}; "
            f"lab / (b) {lab_g / plain_g:.3f}",
            f"  (a-shared) / (a) {shared_g / hand_g:.3f}: kernel.sched_autogroup_enabled = "
            f"{r.autogroup}; wireguard-go leading its own session: {sessions}",
            "",
            "Targets (against (a'): the same topology configured by hand, so the ratio is what",
            "meshcrypt adds; (a) lacks the pods' veths and the nodes' forwarding altogether)",
            f"  {'met   ' if ratio >= TARGET else 'MISSED'} lab {ratio:.3f} of the same-topology "
            f"hand-configured tunnel (a') (>= {TARGET})",
        ]
    )


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench throughput", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    missing = [t for t in ("iperf3", "wireguard-go", "wg") if shutil.which(t) is None]
    if missing:
        parser.error(f"needs {', '.join(missing)} (./dev setup installs them)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    results = Results(machine(), args.seconds)
    with sigterm_unwinds(), lab(2) as state:
        results.mtu = lab_mtu(state)
        results.pod_mtu = state.config.pod_mtu
        with (
            hand_tunnel(results.mtu, args.seed),
            hand_tunnel(results.mtu, args.seed, BARE_SHARED),
            same_topology_tunnel(results.mtu, results.pod_mtu, args.seed),
        ):
            a, b = (["ip", "netns", "exec", ns] for ns in HAND)
            src, dst = state.pods_of("node1")[0], state.pods_of("node2")[0]
            pod_a, pod_b = (["ip", "netns", "exec", p.netns] for p in (src, dst))
            tp_a, tp_b = (["ip", "netns", "exec", ns] for ns in TOPO_PODS)
            sa, sb = (["ip", "netns", "exec", ns] for ns in BARE_SHARED.namespaces)
            for prefix, address in (
                (pod_a, dst.addresses[0]),
                (tp_a, TOPO_POD[1]),
                (a, TUNNEL[1]),
                (sa, BARE_SHARED.tunnel[1]),
            ):
                ping_once(prefix, address)
            lab_wg, lab_agents = lab_processes(state)
            hand_wg = wireguard_go_in(HAND)
            topo_wg = wireguard_go_in(TOPO_NODES)
            shared_wg = wireguard_go_in(BARE_SHARED.namespaces)
            results.note_sessions(lab=lab_wg, topo=topo_wg, hand=hand_wg, shared=shared_wg)

            def run_lab() -> None:
                before = cpu(lab_wg), cpu(lab_agents)
                results.lab.append(iperf(pod_b, pod_a, dst.addresses[0], args.seconds))
                results.lab_wg_cpu.append(cpu(lab_wg) - before[0])
                results.lab_agent_cpu.append(cpu(lab_agents) - before[1])

            def run_topo() -> None:
                before = cpu(topo_wg)
                results.topo.append(iperf(tp_b, tp_a, TOPO_POD[1], args.seconds))
                results.topo_wg_cpu.append(cpu(topo_wg) - before)

            def run_topo_rule() -> None:
                set_rule(True)
                try:
                    results.topo_rule.append(iperf(tp_b, tp_a, TOPO_POD[1], args.seconds))
                finally:
                    set_rule(False)

            def run_hand() -> None:
                before = cpu(hand_wg)
                results.hand.append(iperf(b, a, TUNNEL[1], args.seconds))
                results.hand_wg_cpu.append(cpu(hand_wg) - before)

            def run_hand_shared() -> None:
                tunnel = BARE_SHARED.tunnel[1]
                results.hand_shared.append(iperf(sb, sa, tunnel, args.seconds))

            def run_underlay() -> None:
                results.underlay.append(iperf(b, a, UNDERLAY[1], args.seconds))

            runs = [run_lab, run_topo, run_topo_rule, run_hand, run_hand_shared, run_underlay]
            for number in range(1, args.rounds + 1):
                # Each round starts one path later, so no path always runs first (or after (b)).
                shift = (number - 1) % len(runs)
                for run in runs[shift:] + runs[:shift]:
                    run()
                log(
                    f"round {number}: lab {results.lab[-1]:.2f}, (a') {results.topo[-1]:.2f}, "
                    f"(a'+rule) {results.topo_rule[-1]:.2f}, (a) {results.hand[-1]:.2f}, "
                    f"(a-shared) {results.hand_shared[-1]:.2f}, "
                    f"(b) {results.underlay[-1]:.2f} Gbit/s"
                )
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(results), indent=1) + "\n")
    return 0


def cpu(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def lab_processes(state: LabState) -> tuple[list[int], list[int]]:
    """(wireguard-go pids, agent pids) of the lab's nodes."""
    wg: list[int] = []
    agent_pids: list[int] = []
    for node in state.nodes:
        assert node.agent is not None
        agent_pids.append(node.agent.pid)
        busy = set(lab_proc.pids_in_netns(_netns_ids([node.netns])))
        wg += [p for p in busy if "wireguard-go" in " ".join(lab_proc.cmdline(p))]
    return wg, agent_pids


def wireguard_go_in(namespaces: Sequence[str]) -> list[int]:
    return [
        p
        for p in lab_proc.pids_in_netns(_netns_ids(list(namespaces)))
        if "wireguard-go" in " ".join(lab_proc.cmdline(p))
    ]


def _netns_ids(names: Sequence[str]) -> list[lab_proc.NamespaceId]:
    found = (lab_proc.namespace_id(f"{lab_net.NETNS_DIR}/{n}") for n in names)
    return [i for i in found if i is not None]


def lab_mtu(state: LabState) -> int:
    out = sim_node(state.node("node1")).run("ip", "-o", "link", "show", IFACE)
    return int(out.split(" mtu ")[1].split()[0])
