"""Simulated nodes on one host: a network namespace plus a private mount namespace each.

wireguard-go puts its control socket in the hard-coded ``/var/run/wireguard``, so two nodes that both
run ``wireguard.cali`` in plain network namespaces collide ("UAPI listen error: unix socket in use").
Each node therefore also gets a mount namespace with its own tmpfs on ``/run/wireguard`` (and on any
other directory asked for). A *holder* process keeps that mount namespace alive for as long as the node
exists, so agents, ``wg`` and ``tcpdump`` can come and go: they enter the node with
``nsenter -t <holder> -m -n`` and a restarted agent finds the sockets of the previous run.

From the host, a node's sockets are reachable as ``/proc/<holder>/root/run/wireguard/<iface>.sock``.
Used by the integration tests and the lab.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

# wireguard-go's sockets, and the agent's state (wireguard-go PID files) at its default place.
DEFAULT_PRIVATE_DIRS = ("/run/wireguard", "/run/meshcrypt")
_READY_TIMEOUT = 5.0
_POLL = 0.01

# The holder: mount a tmpfs on every directory given as an argument, then become `sleep` (exec keeps
# the PID, so the PID we get from Popen is the holder's for its whole life).
_HOLDER_SCRIPT = 'for d in "$@"; do mount -t tmpfs none "$d" || exit 1; done; exec sleep infinity'


class NodeCommandError(subprocess.CalledProcessError):
    """A command run inside (or for) a node failed; the message carries its stderr."""

    def __str__(self) -> str:
        stderr = self.stderr.strip() if isinstance(self.stderr, str) else ""
        return f"{super().__str__()}: {stderr}" if stderr else super().__str__()


def run_command(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 60.0,
    input: str | None = None,
) -> str:
    """Run a host command (`input` on its stdin) and return its stdout; with `check`, a failure
    raises NodeCommandError carrying its stderr."""
    res = subprocess.run(
        list(cmd), input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and res.returncode != 0:
        raise NodeCommandError(res.returncode, list(cmd), res.stdout, res.stderr)
    return res.stdout


def _pid_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _kill_and_wait(pid: int, timeout: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not _pid_running(pid):
            return
        time.sleep(_POLL)
    log.warning("pid %d still running after SIGKILL", pid)


class SimNode:
    """One simulated node. Create with `SimNode.create`, remove with `destroy`.

    Attributes: `name` (the node's name), `netns` (its network namespace), `holder_pid`.
    """

    def __init__(
        self,
        name: str,
        netns: str,
        holder_pid: int,
        private_dirs: Sequence[str] = DEFAULT_PRIVATE_DIRS,
        holder: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.name = name
        self.netns = netns
        self.holder_pid = holder_pid
        self.private_dirs = tuple(private_dirs)
        self._holder = holder

    def __repr__(self) -> str:
        return f"SimNode({self.name!r}, netns={self.netns!r}, holder_pid={self.holder_pid})"

    @classmethod
    def create(
        cls, name: str, netns: str | None = None, private_dirs: Sequence[str] = DEFAULT_PRIVATE_DIRS
    ) -> SimNode:
        """Make the netns (``lo`` up) and start its holder; undone on failure."""
        netns = netns or name
        for d in private_dirs:
            # A mount point must exist; creating it on the host's /run is harmless.
            os.makedirs(d, exist_ok=True)
        run_command(["ip", "netns", "add", netns])
        try:
            run_command(["ip", "-n", netns, "link", "set", "lo", "up"])
            holder = cls._start_holder(netns, private_dirs)
        except BaseException:
            run_command(["ip", "netns", "delete", netns], check=False)
            raise
        node = cls(name, netns, holder.pid, private_dirs, holder)
        log.info("created node %s (netns %s, holder pid %d)", name, netns, holder.pid)
        return node

    @staticmethod
    def _start_holder(netns: str, private_dirs: Sequence[str]) -> subprocess.Popen[bytes]:
        cmd = [
            *("ip", "netns", "exec", netns),
            *("unshare", "--mount", "--propagation", "private"),
            *("sh", "-c", _HOLDER_SCRIPT, "holder", *private_dirs),
        ]
        with tempfile.TemporaryFile() as err:
            holder = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # outlives whoever created the node (lab, restarts)
            )
            deadline = time.monotonic() + _READY_TIMEOUT
            while not _holder_ready(holder.pid):
                if holder.poll() is not None or time.monotonic() > deadline:
                    _kill_and_wait(holder.pid)
                    holder.wait()
                    err.seek(0)
                    stderr = err.read().decode(errors="replace").strip()
                    raise NodeCommandError(holder.returncode or 1, cmd, "", stderr)
                time.sleep(_POLL)
        return holder

    # ----------------------------------------------------------------------------------------------

    @property
    def nsenter_prefix(self) -> list[str]:
        """Put in front of a command to run it inside the node."""
        return ["nsenter", "-t", str(self.holder_pid), "-m", "-n"]

    @property
    def socket_dir(self) -> str:
        """The node's wireguard-go socket directory as seen from the host."""
        return f"/proc/{self.holder_pid}/root/run/wireguard"

    def run(self, *cmd: str, check: bool = True, timeout: float | None = 60.0) -> str:
        """Run `cmd` inside the node (cwd is ``/``: pass absolute paths) and return its stdout."""
        return run_command([*self.nsenter_prefix, *cmd], check=check, timeout=timeout)

    def popen(self, *cmd: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `cmd` inside the node; the caller owns the process."""
        return subprocess.Popen([*self.nsenter_prefix, *cmd], **kwargs)

    def pids(self) -> list[int]:
        """Every process in the node's network namespace (the holder included)."""
        out = run_command(["ip", "netns", "pids", self.netns], check=False)
        return [int(word) for word in out.split()]

    def destroy(self) -> None:
        """Kill every process left in the node (by PID), then delete the netns. Idempotent."""
        for pid in self.pids():
            if pid != self.holder_pid:
                _kill_and_wait(pid)
        _kill_and_wait(self.holder_pid)
        if self._holder is not None:
            self._holder.wait()
        run_command(["ip", "netns", "delete", self.netns], check=False)
        log.info("destroyed node %s", self.name)


def _holder_ready(pid: int) -> bool:
    """The holder has mounted its tmpfs directories once it has become `sleep`."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "sleep"
    except FileNotFoundError:
        return False


def veth_pair(
    node_a: SimNode,
    node_b: SimNode,
    addr_a: str,
    addr_b: str,
    name_a: str = "eth0",
    name_b: str = "eth0",
) -> None:
    """Join two nodes with a veth pair, addressed (``10.99.0.1/24``, IPv4 or IPv6) and up.

    Both ends are created directly inside their namespaces, so they may share a name.
    """
    run_command(
        [
            *("ip", "link", "add", name_a, "netns", node_a.netns, "type", "veth"),
            *("peer", "name", name_b, "netns", node_b.netns),
        ]
    )
    for node, ifname, addr in ((node_a, name_a, addr_a), (node_b, name_b, addr_b)):
        iface = ipaddress.ip_interface(addr)
        extra = ["nodad"] if iface.version == 6 else []
        run_command(["ip", "-n", node.netns, "addr", "add", str(iface), "dev", ifname, *extra])
        run_command(["ip", "-n", node.netns, "link", "set", ifname, "up"])
