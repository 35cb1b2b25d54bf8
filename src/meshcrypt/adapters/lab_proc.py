"""Processes of the lab: start them detached, know them by PID *and* start time, find, stop.

Everything the lab starts (etcd, agents, capture) outlives the `meshcrypt lab` command that started
it, so it runs in its own session and is recorded as a `ProcessId`: a PID alone could be reused by an
unrelated process after a crash, the pair (PID, start time in clock ticks since boot) cannot. Nothing
here kills by name: `stop` signals PIDs whose start time still matches, and the scans
(`pids_in_netns`, `find_processes`) only report PIDs, for the caller to decide.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from meshcrypt.adapters.wireguard_go import pid_alive, start_time

_POLL = 0.05


@dataclass(frozen=True, slots=True)
class ProcessId:
    """A process as the lab records it: PID and start time (/proc/<pid>/stat field 22)."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The identity of a running process, or None when `pid` does not exist."""
        started = start_time(pid)
        return None if started is None else cls(pid, started)

    def running(self) -> bool:
        """True while this very process (not a reuse of its PID) runs and is not a zombie."""
        return pid_alive(self.pid) and start_time(self.pid) == self.start_time


@dataclass(frozen=True, slots=True)
class Finished:
    """A command that ran to the end (or was stopped at its timeout: `returncode` is then None)."""

    returncode: int | None
    stdout: str
    stderr: str


def spawn(cmd: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> ProcessId:
    """Start `cmd` in a new session, stdin from /dev/null, stdout and stderr appended to `log_path`.

    posix_spawn rather than subprocess.Popen: the process is meant to outlive this one, which
    Popen would report as a leak. Raises OSError (e.g. FileNotFoundError) when it cannot start.
    """
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        pid = os.posix_spawnp(
            cmd[0],
            list(cmd),
            dict(env),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(log_fd)
    ident = ProcessId.of(pid)
    if ident is None:  # already gone and reaped by nobody yet: report what we know
        return ProcessId(pid, 0)
    return ident


def exit_status(proc: ProcessId) -> int | None:
    """The exit status of a child of ours that has ended (reaping it), else None."""
    try:
        done, status = os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done else None


def stop(procs: Iterable[ProcessId], grace: float = 5.0) -> list[ProcessId]:
    """SIGTERM every process that is still the recorded one, SIGKILL those alive after `grace`
    seconds; the processes that survived even that (normally none)."""
    pending = [p for p in procs if p.running()]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for proc in pending:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            pending = [p for p in pending if p.running()]
            if pending:
                time.sleep(_POLL)
        if not pending:
            break
    return pending


# ---- finding processes ---------------------------------------------------------------------------


NamespaceId = tuple[int, int]  # (st_dev, st_ino) of an nsfs file: one namespace


def namespace_id(path: str) -> NamespaceId | None:
    """The identity of the namespace behind `path` (/run/netns/<name>, /proc/<pid>/ns/net)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def pids_in_netns(namespaces: Collection[NamespaceId]) -> list[int]:
    """Every process whose network namespace is one of `namespaces` (this process excluded)."""
    if not namespaces:
        return []
    me = os.getpid()
    return [
        pid
        for pid in _pids()
        if pid != me and namespace_id(f"/proc/{pid}/ns/net") in namespaces and pid_alive(pid)
    ]


def cmdline(pid: int) -> list[str]:
    """The argument vector of `pid` ([] when it is gone or a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def find_processes(match: Callable[[list[str]], bool]) -> list[ProcessId]:
    """Running processes whose argument vector satisfies `match`."""
    found: list[ProcessId] = []
    for pid in _pids():
        argv = cmdline(pid)
        if argv and match(argv):
            ident = ProcessId.of(pid)
            if ident is not None and ident.running():
                found.append(ident)
    return found


# ---- running commands ----------------------------------------------------------------------------


def run(cmd: Sequence[str], *, timeout: float = 60.0) -> Finished:
    """Run `cmd` to the end, capturing its output (returncode None when it hit the timeout)."""
    try:
        res = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return Finished(None, _text(exc.stdout), _text(exc.stderr))
    except OSError as exc:
        return Finished(127, "", f"{cmd[0]}: {exc.strerror or exc}")
    return Finished(res.returncode, res.stdout, res.stderr)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def run_many(
    cmds: Sequence[Sequence[str]], *, timeout: float, parallel: int = 16
) -> list[Finished]:
    """Run the commands concurrently (at most `parallel` at a time); results in the same order."""
    if not cmds:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(cmds)))) as pool:
        return list(pool.map(lambda cmd: run(cmd, timeout=timeout), cmds))


def run_attached(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run `cmd` with our stdin, stdout and stderr (and `env`, default ours); its exit status.
    OSError if it cannot start."""
    return subprocess.run(list(cmd), env=None if env is None else dict(env), check=False).returncode


class Background:
    """A command running in the background with stdout to a file and stderr collected, e.g.
    ``tcpdump -w -``. `wait_for_stderr` blocks until a line appears (tcpdump's "listening on")."""

    def __init__(self, cmd: Sequence[str], stdout_path: Path) -> None:
        with stdout_path.open("wb") as out:
            self._proc = subprocess.Popen(
                list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE
            )
        self._stderr: list[str] = []

    def wait_for_stderr(self, text: str, timeout: float) -> bool:
        """True once `text` appears on stderr; False if the command ended or `timeout` passed."""
        assert self._proc.stderr is not None
        os.set_blocking(self._proc.stderr.fileno(), False)
        deadline = time.monotonic() + timeout
        buffer = b""
        while time.monotonic() < deadline:
            chunk = self._proc.stderr.read()
            if chunk:
                buffer += chunk
                if text.encode() in buffer:
                    self._stderr.append(buffer.decode(errors="replace"))
                    return True
            elif self._proc.poll() is not None:
                break
            time.sleep(_POLL)
        self._stderr.append(buffer.decode(errors="replace"))
        return False

    def stop(self, timeout: float = 5.0) -> str:
        """SIGINT, wait (SIGKILL after `timeout`); everything it wrote on stderr."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        assert self._proc.stderr is not None
        rest = self._proc.stderr.read() or b""
        self._proc.stderr.close()
        return "".join(self._stderr) + rest.decode(errors="replace")
