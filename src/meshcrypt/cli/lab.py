"""`meshcrypt lab …`: a multi-node cluster on this machine, in network namespaces, with etcd.

Subcommands: up, status, exec, ping, capture, restart-agent, down. Each finds the lab through its
folder (`--dir`, else $MESHCRYPT_LAB_DIR, else /run/meshcrypt-lab).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from meshcrypt.cli import Subparsers
from meshcrypt.lab.config import (
    BACKENDS,
    DEFAULT_DIR,
    DEFAULT_PREFIX,
    DEFAULT_UNDERLAY_V4,
    DEFAULT_UNDERLAY_V6,
    DIR_ENV,
    LabError,
    default_dir,
)
from meshcrypt.model.net import IPFamily

if TYPE_CHECKING:
    from meshcrypt.lab.state import LabState

Runner = Callable[[argparse.Namespace], int]
EXEC_USAGE = "meshcrypt lab exec NODE|POD [--dir DIR] -- CMD [ARG …]"

EPILOG = (
    "Needs root. The lab's traffic stays on a bridge it creates and in its namespaces. "
    "`meshcrypt lab down` removes everything, also after a crash."
)


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "lab",
        help="a multi-node cluster on this machine: namespaces, etcd, one agent per node",
        description=(
            "A cluster on this machine: etcd, N nodes in network namespaces joined by a bridge, "
            "K pods per node wired as Calico's CNI plugin does, BIRD-like routes between the "
            "nodes' blocks, and `meshcrypt agent` in every node."
        ),
        epilog=EPILOG,
    )
    parser.set_defaults(run=lambda _args: _usage(parser))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        default=None,
        help=f"the lab folder (default ${DIR_ENV}, else {DEFAULT_DIR})",
    )
    sub = parser.add_subparsers(title="lab commands", metavar="LABCOMMAND")
    _register_up(sub, common)

    status = sub.add_parser(
        "status", parents=[common], help="nodes, agents, published keys, peers, pods"
    )
    status.set_defaults(run=_run_status)

    exec_ = sub.add_parser(
        "exec",
        parents=[common],
        help="run a command in a node (its network and mount namespaces) or a pod",
        usage=EXEC_USAGE,
    )
    # Split by hand (`_split_exec`): argparse cannot take options after the target and also
    # pass everything after `--` through untouched.
    exec_.add_argument("words", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    exec_.set_defaults(run=_run_exec)

    ping = sub.add_parser(
        "ping",
        parents=[common],
        help="every pod pings one pod on every other node: a matrix",
        description=(
            "First one ping per node pair, one way only, so each pair's first WireGuard handshake "
            "has a single initiator; then every pod pings the first pod of every other node, all "
            "at once, and the replies are shown as a matrix per IP family."
        ),
    )
    ping.add_argument(
        "--count", type=_positive_int, default=3, help="replies each ping needs (default 3)"
    )
    ping.add_argument(
        "--deadline",
        type=_positive_int,
        default=20,
        help="seconds each ping may take to get them (default 20: WireGuard may need up to 15 to "
        "recover a first handshake both ends started at once)",
    )
    ping.set_defaults(run=_run_ping)

    capture = sub.add_parser(
        "capture",
        parents=[common],
        help="tcpdump a node's underlay while pods ping; fails if pod traffic was plaintext",
    )
    capture.add_argument("node")
    capture.add_argument(
        "--seconds", type=float, default=3.0, help="how long to capture (default 3)"
    )
    capture.set_defaults(run=_run_capture)

    restart = sub.add_parser(
        "restart-agent",
        parents=[common],
        help="SIGTERM a node's agent and start it again in the same namespaces",
    )
    restart.add_argument("node")
    restart.add_argument(
        "--no-wait", action="store_true", help="do not wait until the node has converged again"
    )
    restart.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    restart.set_defaults(run=_run_restart)

    down = sub.add_parser(
        "down",
        parents=[common],
        help="remove everything the lab created (also after a crash)",
        description=(
            "Stops the agents, wireguard-go and everything else in the lab's namespaces, etcd; "
            "deletes the namespaces, links, nftables table and the lab folder's files. Without a "
            "state file it scans for leftovers by prefix."
        ),
    )
    down.add_argument(
        "--prefix",
        default=None,
        help=f"the prefix to scan for when there is no state file (default {DEFAULT_PREFIX})",
    )
    down.set_defaults(run=_run_down)


def _register_up(sub: Subparsers[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    up = sub.add_parser(
        "up",
        parents=[common],
        help="start a lab: etcd, nodes, pods, routes and an agent per node",
        description=(
            "Builds the lab and waits until every node's agent has published its key and has a "
            "WireGuard peer for every other node. FELIX_* variables in the environment pass to "
            "the agents."
        ),
        epilog=EPILOG,
    )
    up.add_argument("--nodes", type=_positive_int, default=3, help="how many nodes (default 3)")
    up.add_argument(
        "--pods-per-node", type=int, default=2, metavar="K", help="pods per node (default 2)"
    )
    family = up.add_mutually_exclusive_group()
    family.add_argument("--ipv6", action="store_true", help="IPv6 only")
    family.add_argument("--dual-stack", action="store_true", help="IPv4 and IPv6")
    up.add_argument(
        "--host-encryption",
        action="store_true",
        help="FelixConfiguration wireguardHostEncryptionEnabled: true",
    )
    up.add_argument(
        "--backend",
        choices=BACKENDS,
        default="userspace",
        help="the agents' MESHCRYPT_WIREGUARD_BACKEND (default userspace)",
    )
    up.add_argument(
        "--no-agents",
        action="store_true",
        help="no agents: pods reach each other over the plaintext routes only",
    )
    up.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the agents (default 60)"
    )
    up.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"names of the lab's namespaces and links (default {DEFAULT_PREFIX}); "
        "with another --dir and --underlay, runs a second lab beside the first",
    )
    up.add_argument(
        "--underlay",
        type=IPv4Network,
        default=DEFAULT_UNDERLAY_V4,
        help=f"the bridge's IPv4 network (default {DEFAULT_UNDERLAY_V4})",
    )
    up.add_argument(
        "--underlay6",
        type=IPv6Network,
        default=DEFAULT_UNDERLAY_V6,
        help=f"the bridge's IPv6 network (default {DEFAULT_UNDERLAY_V6})",
    )
    up.set_defaults(run=_run_up)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _lab_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or default_dir()).resolve()


def _say(line: str) -> None:
    print(line, flush=True)


def _error(message: str) -> int:
    print(f"meshcrypt lab: {message}", file=sys.stderr, flush=True)
    return 1


def _quiet_library_logs(args: argparse.Namespace) -> None:
    # The lab prints its own progress; the adapters' INFO lines would only repeat it.
    if args.log_level == "INFO":
        logging.getLogger("meshcrypt").setLevel(logging.WARNING)


def _load(args: argparse.Namespace) -> LabState:
    from meshcrypt.lab.down import lab_command
    from meshcrypt.lab.state import LabState

    lab_dir = _lab_dir(args)
    state = LabState.load(lab_dir)
    if state is None:
        raise LabError(f"no lab in {lab_dir}; start one with `{lab_command(lab_dir, 'up')}`")
    return state


def _guarded(run: Runner) -> Runner:
    """Lab errors become one line on stderr and exit status 1."""

    def wrapper(args: argparse.Namespace) -> int:
        _quiet_library_logs(args)
        try:
            return run(args)
        except LabError as exc:
            return _error(str(exc))

    return wrapper


@_guarded
def _run_up(args: argparse.Namespace) -> int:
    from meshcrypt.lab.config import LabConfig
    from meshcrypt.lab.status import summary
    from meshcrypt.lab.up import up

    if args.dual_stack:
        families: tuple[IPFamily, ...] = (IPFamily.V4, IPFamily.V6)
    else:
        families = (IPFamily.V6,) if args.ipv6 else (IPFamily.V4,)
    config = LabConfig(
        nodes=args.nodes,
        pods_per_node=args.pods_per_node,
        families=families,
        host_encryption=args.host_encryption,
        backend=args.backend,
        agents=not args.no_agents,
        prefix=args.prefix,
        underlay_v4=args.underlay,
        underlay_v6=args.underlay6,
        converge_timeout=args.timeout,
    )
    state = up(config, _lab_dir(args), _say)
    for line in summary(state):
        _say(line)
    return 0


@_guarded
def _run_down(args: argparse.Namespace) -> int:
    from meshcrypt.lab.down import down

    left = down(_lab_dir(args), args.prefix, _say)
    return 1 if left else 0


@_guarded
def _run_status(args: argparse.Namespace) -> int:
    from meshcrypt.lab.status import status

    lines, healthy = status(_load(args))
    for line in lines:
        _say(line)
    return 0 if healthy else 1


class _ExecParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise LabError(f"{message}; usage: {EXEC_USAGE}")


def _split_exec(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(target, command) of `exec`'s words: before `--` the target and --dir (which lands in
    `args.dir`), everything after it the command; without `--`, the first word is the target."""
    words: list[str] = list(args.words)
    if "--" in words:
        cut = words.index("--")
        head, cmd = words[:cut], words[cut + 1 :]
    else:
        head, cmd = words[:1], words[1:]
    parser = _ExecParser(prog="meshcrypt lab exec", add_help=False)
    parser.add_argument("target", metavar="NODE|POD")
    parser.add_argument("--dir", default=args.dir)
    parsed = parser.parse_args(head)
    args.dir = parsed.dir
    return parsed.target, cmd


@_guarded
def _run_exec(args: argparse.Namespace) -> int:
    from meshcrypt.lab.nodes import exec_in

    target, cmd = _split_exec(args)
    return exec_in(_load(args), target, cmd)


@_guarded
def _run_ping(args: argparse.Namespace) -> int:
    from meshcrypt.lab import ping

    state = _load(args)
    pings = ping.plan(state)
    if not pings:
        raise LabError("nothing to ping: the lab needs two nodes with pods")
    for line in ping.warm_up(state, args.deadline):
        _say(line)
    results = ping.run(pings, args.count, args.deadline)
    for line in ping.matrix(state, results, args.count):
        _say(line)
    return 0 if all(r.ok for r in results) else 1


@_guarded
def _run_capture(args: argparse.Namespace) -> int:
    from meshcrypt.lab.capture import capture

    if args.seconds <= 0:
        raise LabError("--seconds must be positive")
    report = capture(_load(args), args.node, args.seconds, _say)
    for line in report.lines():
        _say(line)
    return 0 if report.ok else 1


@_guarded
def _run_restart(args: argparse.Namespace) -> int:
    from meshcrypt.lab.agents import restart_agent

    restart_agent(_load(args), args.node, _say, wait=not args.no_wait, timeout=args.timeout)
    return 0
