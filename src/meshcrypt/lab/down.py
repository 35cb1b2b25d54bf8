"""`lab down`: remove everything a lab created — also after the lab itself crashed.

What is removed comes from two sources, so neither a lost state file nor a step `up` did not get to
record leaves anything behind:

- the state file: agents, node holders and etcd (PID + start time), namespaces, links;
- a scan: network namespaces named `<prefix>-…`, every process whose network namespace is one of
  them (wireguard-go runs in its own session and outlives the agent, so it is found this way, as is
  anything started with `lab exec`), root-namespace links `<prefix>0` / `<prefix>-n<i>`, the nftables
  table `inet <prefix>`, and an `etcd` whose `--data-dir` is the lab folder's.

Processes are signalled by PID only, after checking they are still the process found. Agents get
SIGTERM first and time to exit, so none restarts wireguard-go while it is being stopped.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from meshcrypt.adapters import lab_etcd, lab_net, lab_proc
from meshcrypt.adapters.lab_proc import ProcessId
from meshcrypt.lab.config import DEFAULT_PREFIX, LabConfig, LabError, default_dir
from meshcrypt.lab.state import STATE_FILE, LabState

Say = Callable[[str], None]
_ROUNDS = 3
#: Files a lab folder holds, the only ones `down` deletes.
_LAB_FILES = (STATE_FILE, "lab.tmp", "etcd", "etcd.log", "agent-*.log", "capture-*.pcap")


def lab_command(lab_dir: Path, sub: str) -> str:
    """How to run `meshcrypt lab <sub>` for this lab (with --dir unless it is the default); a
    trailing `--` (exec's separator) stays last."""
    if lab_dir == Path(default_dir()).resolve():
        return f"meshcrypt lab {sub}"
    head, sep, _ = sub.partition(" --")
    return f"meshcrypt lab {head} --dir {lab_dir}{sep}"


def down(lab_dir: Path, prefix: str | None, say: Say) -> list[str]:
    """Remove the lab in `lab_dir` (prefix from its state, else `prefix`, else the default);
    what is left afterwards (empty when everything went)."""
    try:
        state = LabState.load(lab_dir)
    except LabError as exc:
        say(f"{exc}; removing by scan only")
        state = None
    if state is not None:
        config = state.config
        if prefix and prefix != config.prefix:
            say(f"the state file says prefix {config.prefix}; using that instead of {prefix}")
    else:
        config = LabConfig(prefix=prefix or DEFAULT_PREFIX)
        say(f"no lab state in {lab_dir}: scanning for leftovers with prefix {config.prefix}")

    _stop_agents(state, say)
    netns = _lab_netns(config, state)
    _stop_namespace_processes(netns, state, say)
    _stop_etcd(config, lab_dir, state, say)
    for name in netns:
        lab_net.delete_netns(name)
    if netns:
        say(f"deleted {len(netns)} network namespace(s)")
    links = [name for name in lab_net.link_names() if config.is_host_ifname(name)]
    for name in sorted(links, key=lambda n: n == config.bridge):  # the bridge last
        lab_net.delete_link(name)
    if links:
        say(f"deleted link(s) {', '.join(links)}")
    if lab_net.guard_exists(config.guard_table):
        lab_net.remove_forward_guard(config.guard_table)
        say(f"deleted nftables table inet {config.guard_table}")
    _remove_files(lab_dir, say)
    left = lab_leftovers(config, lab_dir, state)
    if left:
        say("NOT removed: " + "; ".join(left))
    return left


def _stop_agents(state: LabState | None, say: Say) -> None:
    recorded = [] if state is None else [n.agent for n in state.nodes if n.agent is not None]
    running = [p for p in recorded if p.running()]
    if running:
        say(f"stopping {len(running)} agent(s): pid {', '.join(str(p.pid) for p in running)}")
        lab_proc.stop(running, grace=10.0)


def _lab_netns(config: LabConfig, state: LabState | None) -> list[str]:
    recorded: set[str] = set()
    if state is not None:
        recorded = {n.netns for n in state.nodes} | {p.netns for p in state.pods}
    return sorted(recorded | set(lab_net.netns_names(config.netns_prefix)))


def _holders(state: LabState | None) -> list[ProcessId]:
    if state is None:
        return []
    return [n.holder for n in state.nodes if n.holder is not None and n.holder.running()]


def _stop_namespace_processes(netns: list[str], state: LabState | None, say: Say) -> None:
    """Everything running in the lab's namespaces: wireguard-go, captures, `lab exec` leftovers,
    the holders. Repeated, in case one of them started another meanwhile."""
    ids = {i for i in (lab_proc.namespace_id(f"{lab_net.NETNS_DIR}/{n}") for n in netns) if i}
    for _ in range(_ROUNDS):
        found = [ProcessId.of(pid) for pid in lab_proc.pids_in_netns(ids)]
        procs = {p for p in found if p is not None} | set(_holders(state))
        if not procs:
            return
        pids = ", ".join(str(p.pid) for p in sorted(procs, key=lambda p: p.pid))
        say(f"stopping {len(procs)} process(es) in the lab's namespaces: pid {pids}")
        lab_proc.stop(procs, grace=5.0)


def _etcd_processes(config: LabConfig, lab_dir: Path, state: LabState | None) -> set[ProcessId]:
    procs = set(lab_etcd.etcd_processes(lab_dir / "etcd", config.prefix))
    recorded = None if state is None or state.etcd is None else state.etcd.process
    if recorded is not None and recorded.running():
        procs.add(recorded)
    return procs


def _stop_etcd(config: LabConfig, lab_dir: Path, state: LabState | None, say: Say) -> None:
    procs = _etcd_processes(config, lab_dir, state)
    if procs:
        say(f"stopping etcd: pid {', '.join(str(p.pid) for p in procs)}")
        lab_proc.stop(procs, grace=10.0)


def _remove_files(lab_dir: Path, say: Say) -> None:
    if not lab_dir.is_dir():
        return
    for pattern in _LAB_FILES:
        for path in lab_dir.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    try:
        lab_dir.rmdir()
        say(f"removed {lab_dir}")
    except OSError:
        rest = sorted(p.name for p in lab_dir.iterdir())
        say(f"kept {lab_dir}: it holds files the lab did not make ({', '.join(rest)})")


def lab_leftovers(config: LabConfig, lab_dir: Path, state: LabState | None = None) -> list[str]:
    """What of a lab with this prefix and folder exists: namespaces, links, processes, mounts,
    the nftables table (empty when nothing does)."""
    found: list[str] = []
    netns = lab_net.netns_names(config.netns_prefix)
    if netns:
        found.append(f"network namespaces {', '.join(netns)}")
    links = [name for name in lab_net.link_names() if config.is_host_ifname(name)]
    if links:
        found.append(f"links {', '.join(links)}")
    if lab_net.guard_exists(config.guard_table):
        found.append(f"nftables table inet {config.guard_table}")
    procs = _etcd_processes(config, lab_dir, state) | set(_holders(state))
    if state is not None:
        procs |= {n.agent for n in state.nodes if n.agent is not None and n.agent.running()}
    if procs:
        found.append(
            f"processes {', '.join(str(p.pid) for p in sorted(procs, key=lambda p: p.pid))}"
        )
    mounts = lab_net.mounts_containing(f"{lab_net.NETNS_DIR}/{config.netns_prefix}")
    if mounts:
        found.append(f"mounts {', '.join(m.split()[1] for m in mounts)}")
    return found
