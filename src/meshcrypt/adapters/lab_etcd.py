"""The lab's etcd: Debian's `etcd` (etcd-server), one member, data in the lab folder.

It serves clients on the addresses it is given (the lab bridge, so the node namespaces reach it,
and loopback for commands on the host) and talks to its own peer port on loopback only. It runs in its
own session, logs to a file, and is found again after a crash of the lab by its command line: an
`etcd` whose `--data-dir` is the lab's.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from meshcrypt.adapters.lab_proc import ProcessId, exit_status, find_processes, spawn, stop

START_TIMEOUT = 20.0


class EtcdStartError(RuntimeError):
    """etcd did not start or did not become healthy; the message carries its log's tail."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_etcd(
    *,
    name: str,
    data_dir: Path,
    client_urls: Sequence[str],
    peer_url: str,
    log_path: Path,
    health_url: str,
) -> ProcessId:
    """Start etcd and wait until `health_url` (one of `client_urls`) reports healthy."""
    binary = shutil.which("etcd")
    if binary is None:
        raise EtcdStartError("etcd is not on PATH (Debian package etcd-server; run ./dev setup)")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    urls = ",".join(client_urls)
    cmd = [
        binary,
        "--name", name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", urls,
        "--advertise-client-urls", urls,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"{name}={peer_url}",
        "--logger", "zap",
        "--log-level", "warn",
    ]  # fmt: skip
    proc = spawn(cmd, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, log_path=log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        status = exit_status(proc)
        if status is not None or not proc.running():
            raise EtcdStartError(f"etcd exited (status {status}): {_tail(log_path)}")
        if healthy(health_url):
            return proc
        time.sleep(0.05)
    stop([proc])
    raise EtcdStartError(f"etcd was not healthy after {START_TIMEOUT:g} s: {_tail(log_path)}")


def healthy(client_url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{client_url}/health", timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and body.get("health") == "true"


def etcd_processes(data_dir: Path, name: str) -> list[ProcessId]:
    """Running etcd servers of a lab: those whose data directory is `data_dir`, and those a lab
    started as member `name` with a data directory called `etcd` (the same lab prefix run from
    another folder)."""

    def match(argv: list[str]) -> bool:
        if Path(argv[0]).name != "etcd":
            return False
        data = _option(argv, "--data-dir")
        if data == str(data_dir):
            return True
        return _option(argv, "--name") == name and data is not None and Path(data).name == "etcd"

    return find_processes(match)


def _option(argv: list[str], option: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.partition("=")[2]
    return None


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"
