"""Start, adopt and stop wireguard-go, the userspace WireGuard used when the kernel has no module.

wireguard-go must outlive the agent: its TUN device is not persistent, so when the process dies the
interface and every route through it vanish, and a restarted agent would have to rebuild the dataplane
and make every peer handshake again. So it runs in its own session (no signal sent to the agent's
process group reaches it), in the foreground (``-f``: never let it daemonize, or we lose its PID), and
its PID goes into a pid file that a restarted agent reads to adopt it.

Which process serves a device is decided by its socket, not by the pid file alone: a PID can be reused
after a crash, so `adopt` asks the socket (SO_PEERCRED) who answers and trusts that.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from meshcrypt.adapters.wireguard_uapi import DEFAULT_SOCKET_DIR, probe, socket_path
from meshcrypt.model.errors import ConfigError, KernelError, NotSupported, kernel_error

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/run/meshcrypt"
LOG_LEVEL_ENV = "MESHCRYPT_WIREGUARD_GO_LOG_LEVEL"  # wireguard-go's LOG_LEVEL: error or verbose
_POLL = 0.02
# Environment variables that make wireguard-go use inherited descriptors instead of its own.
_INHERITED_FD_VARS = ("WG_TUN_FD", "WG_UAPI_FD", "WG_PROCESS_FOREGROUND")
_BANNER_CHARS = "│┌└"


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return stat.rpartition(")")[2].split()


def start_time(pid: int) -> int | None:
    """The process start time in clock ticks since boot (stat field 22): with the PID, an identity."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def pid_alive(pid: int) -> bool:
    """True when `pid` is a running (not zombie) process. Reaps it first if it is our child."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: whoever its parent is reaps it
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


class WireguardGoSupervisor:
    """Runs one wireguard-go process per interface.

    `state_dir` holds ``wireguard-go.<iface>.pid`` and ``wireguard-go.<iface>.log`` (wireguard-go's
    stdout and stderr; never our own). `socket_dir` is where the UAPI sockets appear as seen from this
    process. `prefix_cmd` is put in front of the command, e.g. ``["nsenter", "-t", PID, "-m", "-n"]`` to
    start it inside a simulated node; it must exec (not fork), so that the PID we get is wireguard-go's.
    """

    def __init__(
        self,
        state_dir: str = DEFAULT_STATE_DIR,
        *,
        socket_dir: str = DEFAULT_SOCKET_DIR,
        prefix_cmd: Sequence[str] = (),
        binary: str = "wireguard-go",
        start_timeout: float = 5.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.socket_dir = socket_dir
        self.prefix_cmd = tuple(prefix_cmd)
        self.binary = binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout

    def pid_file(self, iface: str) -> Path:
        if "/" in iface or iface in ("", ".", ".."):
            raise ConfigError("interface name", iface, "not a file name")
        return self.state_dir / f"wireguard-go.{iface}.pid"

    def log_file(self, iface: str) -> Path:
        return self.state_dir / f"wireguard-go.{iface}.log"

    # ----------------------------------------------------------------------------------------------

    def ensure_running(self, iface: str, mtu: int) -> int:
        """The PID of a wireguard-go serving `iface`, starting one if none answers.

        `mtu` (0 = wireguard-go's default) is set on the interface only when this call starts the
        process; an adopted device keeps its MTU and the netlink side reconciles it.
        """
        pid = self.adopt(iface)
        if pid is not None:
            return pid
        stale = self._recorded_pid(iface)
        if stale is not None:
            # Alive but its socket does not answer: hung, or not wireguard-go any more. It may still
            # hold the TUN name, so a new process could not create the device.
            log.warning("%s: wireguard-go pid %d does not answer; replacing it", iface, stale)
            self._terminate(iface, stale)
        pid = self._start(iface)
        if mtu > 0:
            self._set_mtu(iface, mtu)
        return pid

    def adopt(self, iface: str) -> int | None:
        """The PID of the live wireguard-go answering on `iface`'s socket (recorded), or None."""
        pid = probe(socket_path(self.socket_dir, iface))
        if pid is None or not pid_alive(pid):
            return None
        if self._recorded_pid(iface) != pid:
            log.info("%s: adopting running wireguard-go pid %d", iface, pid)
            self._record(iface, pid)
        return pid

    def is_alive(self, iface: str) -> bool:
        """True when a wireguard-go process answers on `iface`'s socket."""
        pid = probe(socket_path(self.socket_dir, iface))
        return pid is not None and pid_alive(pid)

    def stop(self, iface: str) -> None:
        """Stop `iface`'s wireguard-go (SIGTERM, then SIGKILL); its TUN goes away with it."""
        pid = probe(socket_path(self.socket_dir, iface))
        if pid is None:
            pid = self._recorded_pid(iface)
        if pid is not None:
            self._terminate(iface, pid)
        self.pid_file(iface).unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------------

    def _start(self, iface: str) -> int:
        env = {k: v for k, v in os.environ.items() if k not in _INHERITED_FD_VARS}
        # wireguard-go's own log (in `log_file`): errors only, unless an operator asks for more.
        env["LOG_LEVEL"] = os.environ.get(LOG_LEVEL_ENV, "").strip() or "error"
        cmd = [*self.prefix_cmd, self.binary, "-f", iface]
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            log_fd = os.open(self.log_file(iface), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise kernel_error(
                f"{iface}: cannot open wireguard-go's log: {exc}", exc.errno or 0
            ) from exc
        try:
            # posix_spawn rather than subprocess.Popen: the process is meant to outlive the object that
            # started it, which Popen reports as a leak. setsid=True is Popen's start_new_session.
            # Our own descriptors are close-on-exec (PEP 446), so only 0, 1 and 2 are inherited.
            pid = os.posix_spawnp(
                cmd[0],
                cmd,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                ],
                setsid=True,
            )
        except FileNotFoundError as exc:
            raise NotSupported(f"cannot run {cmd[0]}: not installed", errno.ENOENT) from exc
        except OSError as exc:
            raise kernel_error(f"{iface}: cannot start {cmd[0]}: {exc}", exc.errno or 0) from exc
        finally:
            os.close(log_fd)
        log.info("%s: started wireguard-go pid %d", iface, pid)
        try:
            self._wait_for_socket(iface, pid)
        except BaseException:
            self._terminate(iface, pid)
            raise
        self._record(iface, pid)
        return pid

    def _wait_for_socket(self, iface: str, pid: int) -> None:
        path = socket_path(self.socket_dir, iface)
        deadline = time.monotonic() + self.start_timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                raise KernelError(
                    f"{iface}: wireguard-go exited with status {os.waitstatus_to_exitcode(status)} "
                    f"at start: {self._log_tail(iface)}",
                    errno.EIO,
                )
            if probe(path, timeout=1.0) == pid:
                return
            if time.monotonic() > deadline:
                raise KernelError(
                    f"{iface}: wireguard-go socket {path} did not answer within "
                    f"{self.start_timeout:g} s: {self._log_tail(iface)}",
                    errno.ETIMEDOUT,
                )
            time.sleep(_POLL)

    def _set_mtu(self, iface: str, mtu: int) -> None:
        cmd = [*self.prefix_cmd, "ip", "link", "set", "dev", iface, "mtu", str(mtu)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise kernel_error(
                f"{iface}: setting mtu {mtu} failed: {res.stderr.strip()}", errno.EINVAL
            )

    def _terminate(self, iface: str, pid: int) -> None:
        """SIGTERM, wait, SIGKILL, wait. wireguard-go closes its TUN and socket on SIGTERM."""
        for sig, timeout in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 2.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if self._wait_gone(pid, timeout):
                break
            log.warning("%s: wireguard-go pid %d survived %s", iface, pid, sig.name)
        else:
            raise KernelError(f"{iface}: wireguard-go pid {pid} does not die", errno.EBUSY)
        log.info("%s: stopped wireguard-go pid %d", iface, pid)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while pid_alive(pid):  # reaps it when it is our child
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL)
        return True

    def _record(self, iface: str, pid: int) -> None:
        """Write ``PID STARTTIME``: the start time tells a reused PID from our process."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.pid_file(iface)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{pid} {start_time(pid) or 0}\n")
        tmp.replace(path)

    def _recorded_pid(self, iface: str) -> int | None:
        """The recorded PID if that very process (same start time) is still alive, else None."""
        try:
            pid_text, _, started = self.pid_file(iface).read_text().strip().partition(" ")
            pid, recorded_start = int(pid_text), int(started or "0")
        except (FileNotFoundError, ValueError):
            return None
        if not pid_alive(pid) or start_time(pid) != recorded_start:
            return None
        return pid

    def _log_tail(self, iface: str, limit: int = 2000) -> str:
        """The last lines wireguard-go wrote, for error messages (it never logs keys)."""
        try:
            data = self.log_file(iface).read_bytes()[-limit:]
        except OSError:
            return "(no log)"
        # Skip the boxed "kernel has first class support" banner wireguard-go prints at every start.
        lines = [
            line.strip()
            for line in data.decode(errors="replace").splitlines()
            if line.strip() and not any(c in line for c in _BANNER_CHARS)
        ]
        return " | ".join(lines[-3:]) or "(empty log)"
