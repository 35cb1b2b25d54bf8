"""The agent at scale: full resync, deltas and steady-state CPU against N remote nodes (issue 7).

For each size N a fresh cluster is built the way the agent tests build theirs (a bridge `mcbr1xx`,
etcd serving on it, simulated nodes with `eth0` in the bridge): N remote nodes are written to etcd
(`bench.world`), then, each on its own fresh node:

* baselines, `--rounds` times (median): (a) `wg syncconf` + `ip -batch`, (b) the floor, one UAPI
  set + `ip -batch` (`bench.baselines`); each times the programming alone; and the least Python
  agent (`bench.least_python`, in sequence and overlapped), timed from its start like the agent;
* the agent, `--rounds` times (median), `python -m meshcrypt agent` (userspace backend) started
  through `bench.probe`, which reports the end of every dataplane apply; after each run but the
  last, its node and what it wrote to etcd are removed. **Full resync** = agent start → the end of
  the first apply after which the device has N peers and table 1 has N device routes (checked
  through the UAPI socket and `ip route`); peak RSS = VmHWM of the agent process. In the last run,
  once the agent is idle:
* **delta** (N in `--delta-sizes`): `--changes` single changes, rotating key → endpoint → block of
  a seeded random node; each is written in one etcd transaction and timed from just before the
  write to the end of the first apply that started after it and after which the device (and, for
  a block, table 1) shows the change; CPU per change = agent utime+stime over the run / changes.
  The agent's own `meshcrypt_event_to_programmed_seconds` histogram is shown beside it. These agents
  run with `FELIX_ROUTEREFRESHINTERVAL=3600`, so no periodic resync falls into the window;
* **steady state** (N = `--steady-size`): `--steady-seconds` without changes, with
  `FELIX_ROUTEREFRESHINTERVAL=--refresh` so that periodic resyncs fall into the window; agent CPU
  seconds and % of one core.

Remote nodes have no WireGuard tunnel address, so N peers and N device routes are expected (plus
throw routes for the agent's own block). Their blocks start at the pool's second /26: the agent
claims the first, so its claim does not scan the cluster's blocks (see `bench.ipam_claim`).

Needs root. Everything it creates (bridge, namespaces, etcd, agents, wireguard-go) is removed at the
end, also on Ctrl-C or SIGTERM.

    .venv/bin/python -m bench scale [--sizes 1000,5000,10000] [--delta-sizes 1000,10000]
        [--steady-size 5000] [--changes 200] [--rounds 3] [--json FILE] [--logs DIR]
        [--profile DIR] [--preload FILE.py]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.baselines import (
    IFACE,
    PORT,
    TABLE,
    floor,
    least_python,
    start_device,
    syncconf,
    uapi,
)
from bench.labrun import machine, sigterm_unwinds
from bench.probe import PRELOAD_ENV, PROBE_ENV, PROFILE_ENV
from bench.procstat import cpu_seconds, memory_mb
from bench.world import Change, Op, World, txn
from meshcrypt.adapters.nodens import SimNode
from meshcrypt.datastore import layout
from meshcrypt.model.net import IPFamily
from tests.integration.cluster import AgentNode, Cluster, cluster

REPO = Path(__file__).resolve().parent.parent
RESYNC_TIMEOUT = 600.0
CHANGE_TIMEOUT = 15.0
METRICS_PORT = 9091
HISTOGRAM = "meshcrypt_event_to_programmed_seconds"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- the kernel, as the benchmark sees it --------------------------------------------------------


def device_dump(sim: SimNode) -> bytes:
    return uapi(sim, b"get=1\n\n")


def device_routes(sim: SimNode, cidr: str | None = None) -> list[str]:
    """Table 1's routes through our device (those of `cidr` only, when given)."""
    cmd = ["ip", "-n", sim.netns, "-4", "route", "show", "table", str(TABLE)]
    for _ in range(20):
        done = subprocess.run(
            cmd + ([cidr] if cidr else []), capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            return [line for line in done.stdout.splitlines() if f"dev {IFACE}" in line]
        if "table does not exist" in done.stderr:
            return []  # no route in it yet
        # A dump that overlaps a batch of route writes ends with "Dump was interrupted": again.
        if "interrupted" not in done.stderr:
            break
    raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def counts(sim: SimNode) -> tuple[int, int]:
    """(peers on the device, device routes in table 1)."""
    return device_dump(sim).count(b"\npublic_key="), len(device_routes(sim))


def _peer_section(dump: bytes, key_hex: str) -> bytes | None:
    start = dump.find(f"public_key={key_hex}\n".encode())
    if start < 0:
        return None
    end = dump.find(b"public_key=", start + 11)
    return dump[start : end if end >= 0 else len(dump)]


def shows(sim: SimNode, change: Change) -> bool:
    """Whether the device (and table 1) show `change` in full."""
    dump = device_dump(sim)
    peer = _peer_section(dump, change.key.to_hex())
    if peer is None or f"\nendpoint={change.endpoint}:{PORT}\n".encode() not in peer:
        return False
    if f"\nallowed_ip={change.cidr}\n".encode() not in peer:
        return False
    if change.old_key is not None and _peer_section(dump, change.old_key.to_hex()) is not None:
        return False
    if change.old_cidr is not None:
        if f"allowed_ip={change.old_cidr}\n".encode() in dump:
            return False
        return bool(device_routes(sim, change.cidr)) and not device_routes(sim, change.old_cidr)
    return True


# ---- the agent -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Apply:
    start: float
    end: float
    full: bool
    ok: bool


class Probe:
    """The benchmark's end of `bench.probe`: a unix datagram socket the agent reports to."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.boot: float | None = None
        self.applies: list[Apply] = []

    def next_apply(self, deadline: float) -> Apply | None:
        """The next apply reported (recording every report), or None at the deadline."""
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                fields = self.sock.recv(256).decode().split()
            except TimeoutError:
                return None
            if fields[0] == "boot":
                self.boot = float(fields[1])
            elif fields[0] == "apply":
                a = Apply(float(fields[1]), float(fields[2]), fields[3] == "1", fields[4] == "1")
                self.applies.append(a)
                return a

    def drain(self) -> None:
        while self.next_apply(time.time() + 0.001) is not None:
            pass

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_time(node: AgentNode, needle: str) -> float | None:
    """Wall-clock time of the agent's first log line containing `needle`."""
    for line in node.log().splitlines():
        m = _LOG_TIME.match(line)
        if m and needle in line:
            return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def start_agent(
    c: Cluster,
    name: str,
    probe: Probe,
    env: dict[str, str],
    profile: str | None,
    preload: str | None,
) -> AgentNode:
    """`python -m bench.probe agent` on a new node `name` (like `AgentNode.start`, plus the probe)."""
    extra = {"PYTHONPATH": str(REPO), PROBE_ENV: probe.path, **env}
    if profile:
        extra[PROFILE_ENV] = profile
    if preload:
        extra[PRELOAD_ENV] = preload
    node = c.add_node(name, start=False, **extra)
    with node.log_path.open("ab") as out:
        node.proc = node.sim.popen(
            "env",
            *(f"{k}={v}" for k, v in node.env.items()),
            sys.executable,
            *("-m", "bench.probe", "--log-level", "INFO", "agent"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return node


def agent_pid(node: AgentNode) -> int:
    assert node.proc is not None
    return node.proc.pid  # nsenter and env exec: this is the python process


def wireguard_go_pid(node: AgentNode) -> int | None:
    others = [p for p in node.sim.pids() if p not in (node.sim.holder_pid, agent_pid(node))]
    return others[0] if len(others) == 1 else None


def histogram(node: AgentNode) -> dict[float, float]:
    """The agent's event-to-programmed histogram: upper bound -> cumulative count."""
    url = f"http://{node.address}:{METRICS_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    found: dict[float, float] = {}
    for m in re.finditer(rf'^{HISTOGRAM}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M):
        found[float(m.group(1))] = float(m.group(2))
    return found


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound of the bucket holding quantile `q` of the observations between two scrapes."""
    bounds = sorted(after)
    diffs = [after[b] - before.get(b, 0.0) for b in bounds]
    total = diffs[-1] if diffs else 0.0
    for bound, cumulative in zip(bounds, diffs, strict=True):
        if total and cumulative >= q * total:
            return bound
    return float("nan")


def _quiet(probe: Probe, seconds: float) -> bool:
    """No apply for `seconds` but periodic full resyncs (a short RouteRefreshInterval must not keep
    the agent from counting as idle)."""
    end = time.time() + seconds
    while (a := probe.next_apply(end)) is not None:
        if not a.full:
            return False
    return True


def wait_idle(c: Cluster, node: AgentNode, probe: Probe, quiet: float = 2.0) -> float:
    """Wait until the agent has published its key and tunnel address and stopped applying for
    `quiet` seconds with (almost) no CPU; seconds waited."""
    start = time.time()
    deadline = start + 300
    pid = agent_pid(node)
    while time.time() < deadline:
        doc = c.node_doc(node.name) or {}
        published = bool(doc.get("status", {}).get("wireguardPublicKey"))
        tunnel = bool(doc.get("spec", {}).get("wireguard", {}).get("interfaceIPv4Address"))
        cpu = cpu_seconds(pid)
        idle = _quiet(probe, quiet)
        if idle and published and tunnel and cpu_seconds(pid) - cpu < 0.05 * quiet:
            return time.time() - start
    raise RuntimeError("the agent did not settle within 300 s")


# ---- results -------------------------------------------------------------------------------------


@dataclass
class Resync:
    n: int
    agent_s: float
    python_up_s: float | None  # agent start -> probe loaded (interpreter up)
    listed_s: float | None  # agent start -> snapshot listed from etcd
    first_apply_start_s: float  # agent start -> first apply began
    programming_s: float  # duration of the apply that programmed everything
    applies: int  # applies until programmed
    cpu_s: float  # agent CPU until programmed
    rss_programmed_mb: float
    hwm_mb: float = 0.0  # peak RSS over the whole run (set at the end)
    rss_settled_mb: float = 0.0  # once idle after start-up
    floor_s: float = 0.0
    syncconf_s: float = 0.0
    floor_runs: list[float] = field(default_factory=list)
    syncconf_runs: list[float] = field(default_factory=list)
    least_s: float = 0.0  # bench.least_python: start -> programmed, in sequence
    least_overlap_s: float = 0.0  # the same, peers sent while the blocks are read
    settle_s: float = 0.0
    delta: Delta | None = None
    steady: Steady | None = None


@dataclass
class Delta:
    n: int
    changes: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    by_kind_p50_ms: dict[str, float]
    cpu_ms_per_change: float
    applies_per_change: float
    agent_p50_le_ms: float  # the agent's histogram: bucket bounds holding p50 / p99
    agent_p99_le_ms: float
    failures: int
    latencies_ms: list[float] = field(repr=False)


@dataclass
class Steady:
    n: int
    seconds: float
    cpu_s: float
    percent_core: float
    resyncs: int
    resync_ms: list[float]
    wireguard_go_cpu_s: float | None
    refresh_interval: float


@dataclass
class Results:
    machine: dict[str, str]
    resync: list[Resync] = field(default_factory=list)  # every round of every size

    def sizes(self) -> list[int]:
        return sorted({r.n for r in self.resync})

    def rounds(self, n: int) -> list[Resync]:
        return [r for r in self.resync if r.n == n]

    def median(self, n: int) -> Resync:
        """The round with the median agent time (the lower middle one of an even count)."""
        ranked = sorted(self.rounds(n), key=lambda r: r.agent_s)
        return ranked[(len(ranked) - 1) // 2]

    @property
    def delta(self) -> list[Delta]:
        return [r.delta for r in self.resync if r.delta is not None]

    @property
    def steady(self) -> list[Steady]:
        return [r.steady for r in self.resync if r.steady is not None]


# ---- the measurements ----------------------------------------------------------------------------


def baselines(c: Cluster, world: World, rounds: int, tmp: Path) -> dict[str, list[float]]:
    """Seconds of each round of every baseline (floor, syncconf, least, least_overlap); each run
    on a fresh node, checked afterwards."""
    peers = world.peers()
    variants: dict[str, Callable[[SimNode], float]] = {
        "floor": lambda sim: floor(sim, peers),
        "syncconf": lambda sim: syncconf(sim, peers, tmp),
        "least": lambda sim: least_python(sim, c.etcd_url, overlap=False),
        "least_overlap": lambda sim: least_python(sim, c.etcd_url, overlap=True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, run in variants.items():
            node = c.add_node(f"{name}{r}", start=False)
            try:
                start_device(node.sim, tmp / "state")
                times[name].append(run(node.sim))
                found = counts(node.sim)
                if found != (world.n, world.n):
                    raise RuntimeError(f"{name}: {found} peers/routes, not {world.n}")
            finally:
                node.sim.destroy()
    return times


def resync(
    node: AgentNode, probe: Probe, world: World, started: float
) -> tuple[float, Apply, int, float, float]:
    """Wait for the agent to program everything: (seconds, that apply, applies, CPU s, RSS MB)."""
    deadline = started + RESYNC_TIMEOUT
    seen = 0
    pid = agent_pid(node)
    while True:
        a = probe.next_apply(deadline)
        if a is None:
            raise RuntimeError(f"not programmed in {RESYNC_TIMEOUT} s; log: {node.log_path}")
        seen += 1
        if a.ok:
            cpu, rss = cpu_seconds(pid), memory_mb(pid)["VmRSS"]
            if counts(node.sim) == (world.n, world.n):
                return a.end - started, a, seen, cpu, rss


def delta(c: Cluster, node: AgentNode, probe: Probe, world: World, changes: int) -> Delta:
    pid = agent_pid(node)
    hist_before = histogram(node)
    probe.drain()
    cpu_before = cpu_seconds(pid)
    latencies: list[float] = []
    kinds: dict[str, list[float]] = {}
    applies = failures = 0
    for number in range(changes):
        change = world.change(number)
        written = time.time()
        txn(c.etcd, change.ops)
        while True:
            a = probe.next_apply(written + CHANGE_TIMEOUT)
            if a is None:
                failures += 1
                log(f"change {number} ({change.kind} of node {change.node}) not seen in time")
                break
            applies += 1
            if a.ok and a.start >= written and shows(node.sim, change):
                latencies.append(a.end - written)
                kinds.setdefault(change.kind, []).append(a.end - written)
                break
        time.sleep(0.02)
    cpu = cpu_seconds(pid) - cpu_before
    hist_after = histogram(node)
    ms = sorted(x * 1000 for x in latencies)
    return Delta(
        n=world.n,
        changes=changes,
        p50_ms=statistics.median(ms),
        p99_ms=ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
        max_ms=ms[-1],
        by_kind_p50_ms={k: statistics.median(v) * 1000 for k, v in kinds.items()},
        cpu_ms_per_change=cpu / changes * 1000,
        applies_per_change=applies / changes,
        agent_p50_le_ms=histogram_quantile(hist_before, hist_after, 0.5) * 1000,
        agent_p99_le_ms=histogram_quantile(hist_before, hist_after, 0.99) * 1000,
        failures=failures,
        latencies_ms=ms,
    )


def steady(node: AgentNode, probe: Probe, n: int, seconds: float, refresh: float) -> Steady:
    pid, wg = agent_pid(node), wireguard_go_pid(node)
    probe.drain()
    cpu_before, wg_before = cpu_seconds(pid), (cpu_seconds(wg) if wg else None)
    start = time.time()
    end = start + seconds
    full: list[Apply] = []
    while (a := probe.next_apply(end)) is not None:
        if a.full:
            full.append(a)
    cpu = cpu_seconds(pid) - cpu_before
    elapsed = time.time() - start
    return Steady(
        n=n,
        seconds=elapsed,
        cpu_s=cpu,
        percent_core=cpu / elapsed * 100,
        resyncs=len(full),
        resync_ms=[(a.end - a.start) * 1000 for a in full],
        wireguard_go_cpu_s=None if wg is None or wg_before is None else cpu_seconds(wg) - wg_before,
        refresh_interval=refresh,
    )


def run_size(n: int, args: argparse.Namespace, results: Results) -> None:
    world = World(n, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="mcbench-") as tmpdir, cluster(Path(tmpdir)) as c:
        tmp = Path(tmpdir)
        log(f"N={n}: cluster on {c.bridge}; writing {n} nodes and blocks to etcd")
        world.load(c.etcd)
        log(f"N={n}: baselines ({args.rounds} rounds)")
        base = baselines(c, world, args.rounds, tmp)
        for number in range(1, args.rounds + 1):
            last = number == args.rounds
            r = agent_round(c, world, args, tmp, f"agent{number}", last)
            r.floor_s, r.floor_runs = statistics.median(base["floor"]), base["floor"]
            r.syncconf_s, r.syncconf_runs = statistics.median(base["syncconf"]), base["syncconf"]
            r.least_s = statistics.median(base["least"])
            r.least_overlap_s = statistics.median(base["least_overlap"])
            results.resync.append(r)
            if not last:
                forget_agent(c, f"agent{number}")


def agent_round(
    c: Cluster, world: World, args: argparse.Namespace, tmp: Path, name: str, last: bool
) -> Resync:
    """Start agent `name` on a fresh node and measure its full resync; in the last round, the
    deltas and the steady state as well. The agent is stopped at the end."""
    n = world.n
    is_steady = last and n == args.steady_size
    refresh = args.refresh if n == args.steady_size else 3600.0
    env = {
        "FELIX_ROUTEREFRESHINTERVAL": str(refresh),
        "FELIX_PROMETHEUSMETRICSENABLED": "true",
        "FELIX_PROMETHEUSWIREGUARDMETRICSENABLED": "false",
    }
    profile = str(Path(args.profile).resolve() / f"{name}-{n}") if args.profile else None
    probe = Probe(tmp / f"{name}.sock")
    try:
        log(f"N={n}: starting {name}")
        started = time.time()
        node = start_agent(c, name, probe, env, profile, args.preload)
        seconds, programmed, applies, cpu, rss = resync(node, probe, world, started)
        r = Resync(
            n=n,
            agent_s=seconds,
            python_up_s=None if probe.boot is None else probe.boot - started,
            listed_s=_since(log_time(node, "datastore snapshot:"), started),
            first_apply_start_s=probe.applies[0].start - started,
            programming_s=programmed.end - programmed.start,
            applies=applies,
            cpu_s=cpu,
            rss_programmed_mb=rss,
        )
        windows = _Windows(node, profile)
        windows.close("startup")
        log(f"N={n}: programmed after {seconds:.2f} s; waiting for {name} to settle")
        r.settle_s = wait_idle(c, node, probe)
        r.rss_settled_mb = memory_mb(agent_pid(node))["VmRSS"]
        if last and n in args.delta_sizes:
            log(f"N={n}: {args.changes} changes")
            with windows.open("delta"):
                r.delta = delta(c, node, probe, world, args.changes)
        if is_steady:
            log(f"N={n}: {args.steady_seconds:.0f} s steady state")
            with windows.open("steady"):
                r.steady = steady(node, probe, n, args.steady_seconds, refresh)
        r.hwm_mb = memory_mb(agent_pid(node))["VmHWM"]
        node.stop()  # SIGTERM
        windows.rename()
        return r
    finally:
        probe.close()
        if args.logs and name in c.nodes:
            kept = Path(args.logs) / f"{name}-{n}.log"
            shutil.copyfile(c.nodes[name].log_path, kept)
            log(f"agent log: {kept}")


def forget_agent(c: Cluster, name: str) -> None:
    """Remove a stopped agent's node and everything it wrote to etcd, so the next agent does not
    see it as a remote node and claims the same block."""
    c.nodes[name].sim.destroy()
    ops: list[Op] = [
        (layout.node_key(name), None),
        (layout.ipam_handle_key(layout.wireguard_handle_id(name, IPFamily.V4)), None),
    ]
    for cidr in c.blocks_of(name):
        net = ipaddress.ip_network(cidr)
        ops += [(layout.ipam_block_key(net), None), (layout.block_affinity_key(name, net), None)]
    txn(c.etcd, ops)


class _Windows:
    """The agent's profiling windows (`bench.probe`): the first runs from start; SIGUSR2 ends the
    current one or opens the next. Their files are renamed after the phase they cover."""

    def __init__(self, node: AgentNode, prefix: str | None) -> None:
        self.node, self.prefix = node, prefix
        self.names: list[str] = []

    def close(self, name: str) -> None:
        if self.prefix:
            os.kill(agent_pid(self.node), signal.SIGUSR2)
            self.names.append(name)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[None]:
        if self.prefix:
            os.kill(agent_pid(self.node), signal.SIGUSR2)
        yield
        self.close(name)

    def rename(self) -> None:
        for number, name in enumerate(self.names, 1):
            for part in ("loop", "dataplane"):
                source = Path(f"{self.prefix}.{number}.{part}.pstats")
                if source.exists():
                    source.rename(f"{self.prefix}-{name}.{part}.pstats")
                    log(f"profile: {self.prefix}-{name}.{part}.pstats")


def _since(t: float | None, start: float) -> float | None:
    return None if t is None else t - start


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


# ---- report --------------------------------------------------------------------------------------


def _row(label: str, cells: Sequence[str]) -> str:
    return f"  {label:44s}" + "".join(f"{cell:>15s}" for cell in cells)


def report(results: Results, args: argparse.Namespace) -> str:
    m = results.machine
    lines = [
        f"meshcrypt scale benchmark, {m['date']}: {m['nproc']} CPUs ({m['cpu']}), "
        f"kernel {m['kernel']}, Python {m['python']}, load {m['load_at_start']} at start",
        "",
    ]
    if results.resync:
        rs = [results.median(n) for n in results.sizes()]
        every = [results.rounds(n) for n in results.sizes()]
        lines += [
            "1. Full resync: agent start -> N peers + N routes programmed "
            f"(median of {args.rounds} runs; breakdown: the median agent run)",
            _row("N", [f"{r.n:,}" for r in rs]),
            _row("agent (userspace backend)", [ms(r.agent_s) for r in rs]),
            _row("  runs", ["/".join(f"{x.agent_s:.1f}" for x in e) + " s" for e in every]),
            _row("  python up (probe loaded)", [ms(r.python_up_s) for r in rs]),
            _row("  etcd listed (log)", [ms(r.listed_s) for r in rs]),
            _row("  first apply started", [ms(r.first_apply_start_s) for r in rs]),
            _row("  the programming apply took", [ms(r.programming_s) for r in rs]),
            _row("  applies until programmed", [str(r.applies) for r in rs]),
            _row("  agent CPU until programmed", [f"{r.cpu_s:.2f} s" for r in rs]),
            _row("baseline (a) wg syncconf + ip -batch", [ms(r.syncconf_s) for r in rs]),
            _row("baseline (b) floor: UAPI set + ip -batch", [ms(r.floor_s) for r in rs]),
            _row("agent / floor (target <= 1.5)", [f"{r.agent_s / r.floor_s:.1f}x" for r in rs]),
            _row("agent apply / floor", [f"{r.programming_s / r.floor_s:.1f}x" for r in rs]),
            _row("least Python agent, in sequence", [ms(r.least_s) for r in rs]),
            _row("  / floor", [f"{r.least_s / r.floor_s:.1f}x" for r in rs]),
            _row("least Python agent, overlapped", [ms(r.least_overlap_s) for r in rs]),
            _row("  / floor", [f"{r.least_overlap_s / r.floor_s:.1f}x" for r in rs]),
            _row("agent RSS when programmed", [f"{r.rss_programmed_mb:.0f} MB" for r in rs]),
            _row("agent RSS once idle", [f"{r.rss_settled_mb:.0f} MB" for r in rs]),
            _row(
                "agent peak RSS, VmHWM, highest run",
                [f"{max(x.hwm_mb for x in e):.0f} MB" for e in every],
            ),
            "",
        ]
    if results.delta:
        ds = results.delta
        lines += [
            "2. Delta: one node's key / endpoint / block changed in turn; etcd write -> programmed",
            _row("N", [f"{d.n:,}" for d in ds]),
            _row("changes (not programmed in 15 s)", [f"{d.changes} ({d.failures})" for d in ds]),
            _row("p50", [f"{d.p50_ms:.1f} ms" for d in ds]),
            _row("p99 (target <= 50 ms)", [f"{d.p99_ms:.1f} ms" for d in ds]),
            _row("max", [f"{d.max_ms:.1f} ms" for d in ds]),
        ]
        for kind in ("key", "endpoint", "block"):
            lines.append(
                _row(f"  p50 {kind}", [f"{d.by_kind_p50_ms.get(kind, 0):.1f} ms" for d in ds])
            )
        lines += [
            _row(
                "agent histogram p50 / p99 (bucket <=)",
                [f"{d.agent_p50_le_ms:g}/{d.agent_p99_le_ms:g}" for d in ds],
            ),
            _row("agent CPU per change", [f"{d.cpu_ms_per_change:.1f} ms" for d in ds]),
            _row("applies seen per change", [f"{d.applies_per_change:.2f}" for d in ds]),
            "",
        ]
    for s in results.steady:
        resyncs = ", ".join(f"{t:.0f}" for t in s.resync_ms) or "none"
        wg = "-" if s.wireguard_go_cpu_s is None else f"{s.wireguard_go_cpu_s:.2f} s"
        lines += [
            f"5. Steady state: {s.n:,} nodes, no changes, {s.seconds:.0f} s, "
            f"RouteRefreshInterval {s.refresh_interval:g} s",
            f"  agent CPU {s.cpu_s:.2f} s = {s.percent_core:.1f} % of one core; "
            f"{s.resyncs} periodic resyncs in the window ({resyncs} ms); wireguard-go CPU {wg}",
            "",
        ]
    return "\n".join(lines + targets(results))


def targets(results: Results) -> list[str]:
    """One line per target of issue 7: met or missed, with the figure."""

    def verdict(ok: bool) -> str:
        return "met   " if ok else "MISSED"

    lines = ["Targets"]
    for n in results.sizes():
        r = results.median(n)
        ratio = r.agent_s / r.floor_s
        lines.append(
            f"  {verdict(ratio <= 1.5)} resync at {n:,}: agent {ratio:.1f}x floor (<= 1.5x)"
        )
    if 10000 in results.sizes():
        hwm = max(r.hwm_mb for r in results.rounds(10000))
        lines.append(
            f"  {verdict(hwm <= 150)} RSS at 10,000: {hwm:.0f} MB, highest run (<= 150 MB)"
        )
    for d in results.delta:
        lines.append(
            f"  {verdict(d.p99_ms <= 50)} delta p99 at {d.n:,}: {d.p99_ms:.1f} ms (<= 50 ms)"
        )
    if len(results.delta) > 1:
        small = min(results.delta, key=lambda d: d.n)
        large = max(results.delta, key=lambda d: d.n)
        growth = large.cpu_ms_per_change / small.cpu_ms_per_change
        lines.append(
            f"  {verdict(growth <= 1.5)} delta cost independent of N: CPU per change "
            f"x{growth:.1f} from {small.n:,} to {large.n:,} nodes (<= x1.5 taken as independent)"
        )
    return lines


# ---- main ----------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench scale", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--sizes", type=_sizes, default=[1000, 5000, 10000])
    parser.add_argument("--delta-sizes", type=_sizes, default=[1000, 10000])
    parser.add_argument("--steady-size", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--refresh", type=float, default=30.0, help="RouteRefreshInterval, steady")
    parser.add_argument(
        "--rounds", type=int, default=3, help="full resync runs of the agent and of each baseline"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--profile", help="cProfile the agents; statistics go to this directory")
    parser.add_argument("--logs", help="keep the agents' logs in this directory")
    parser.add_argument(
        "--preload",
        help="FILE.py[,…] run in the agent before it starts (try a change to meshcrypt)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, wireguard-go)")
    if args.preload:
        args.preload = ",".join(str(Path(f).resolve()) for f in args.preload.split(","))
    for directory in (args.profile, args.logs):
        if directory:
            Path(directory).mkdir(parents=True, exist_ok=True)
    results = Results(machine())
    with sigterm_unwinds():
        for n in args.sizes:
            run_size(n, args, results)
    text = report(results, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(results), indent=1) + "\n")
    return 0
