"""A real etcd server for tests: loopback only, a temporary data dir, free ports.

``with running_etcd(tmp_path) as server:`` starts `etcd` (Debian's etcd-server) on 127.0.0.1 and
stops it at the end, even when the test fails. `stop()` / `start()` simulate an outage with the same
data dir and ports, so the revision history survives. Out-of-band helpers (`put`, `delete`,
`revision`, `compact`) talk to etcd's JSON gateway (`/v3/...`) with the standard library, so a test can
change the store synchronously, as another cluster member would, without sharing the asyncio client
under test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdServer:
    """One single-member etcd cluster on loopback."""

    def __init__(
        self, data_dir: Path, name: str = "mctest", extra_client_hosts: tuple[str, ...] = ()
    ) -> None:
        self.data_dir = data_dir
        self.extra_client_hosts = extra_client_hosts
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = data_dir.parent / f"{data_dir.name}.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start etcd (again, after `stop()`) and wait until it answers."""
        self._start(self.extra_client_hosts)

    def start_private(self) -> None:
        """Start etcd serving loopback only: down for clients on the extra hosts, not for the test."""
        self._start(())

    def _start(self, extra_client_hosts: tuple[str, ...]) -> None:
        if self.running:
            return
        etcd = shutil.which("etcd")
        if etcd is None:
            raise RuntimeError("etcd is not on PATH (Debian package etcd-server)")
        clients = [f"http://{h}:{self.client_port}" for h in ("127.0.0.1", *extra_client_hosts)]
        client = ",".join(clients)
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            etcd,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--logger", "zap",
            "--log-level", "error",
        ]  # fmt: skip
        log = self._log.open("ab")
        try:
            # Its own session, so a Ctrl-C of the test run does not reach it before teardown does.
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self._proc.returncode}: {self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {START_TIMEOUT} s: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM etcd (SIGKILL after a grace period) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as resp:
                body: dict[str, Any] = json.loads(resp.read())
        except (OSError, ValueError):
            return False
        return body.get("health") == "true"

    # ---- out-of-band access through the JSON gateway ---------------------------------------------

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.endpoint}/v3/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                result: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"etcd /v3/{path}: {exc.code} {exc.read()!r}") from exc
        return result

    def revision(self) -> int:
        """The store's current revision."""
        header = self._call("kv/range", {"key": _b64("\0"), "limit": 1})["header"]
        return int(header["revision"])

    def put(self, key: str, value: bytes | str) -> int:
        """Write one key; the revision of the write."""
        raw = value.encode() if isinstance(value, str) else value
        body = {"key": _b64(key), "value": base64.b64encode(raw).decode()}
        return int(self._call("kv/put", body)["header"]["revision"])

    def values(self, key: str, prefix: bool = False) -> list[bytes]:
        """The value of `key` (a list of one, or empty), or with `prefix` of every key under it."""
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(key[:-1] + chr(ord(key[-1]) + 1))
        kvs = self._call("kv/range", body).get("kvs", [])
        return [base64.b64decode(kv["value"]) for kv in kvs]

    def mod_revision(self, key: str) -> int | None:
        """The revision of the key's last write; None when it does not exist."""
        kvs = self._call("kv/range", {"key": _b64(key)}).get("kvs", [])
        return int(kvs[0]["mod_revision"]) if kvs else None

    def delete(self, key: str) -> int:
        """Delete one key; the store revision afterwards."""
        return int(self._call("kv/deleterange", {"key": _b64(key)})["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact history below `revision` (default: the current revision); the revision used."""
        rev = self.revision() if revision is None else revision
        self._call("kv/compaction", {"revision": rev, "physical": True})
        return rev


@contextlib.contextmanager
def running_etcd(
    tmp_path: Path, name: str = "etcd", extra_client_hosts: tuple[str, ...] = ()
) -> Iterator[EtcdServer]:
    """An etcd server for the duration of the block, stopped afterwards whatever happens.

    `extra_client_hosts`: further addresses to serve clients on (e.g. a test bridge's address)."""
    data_dir = tmp_path / name
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    server = EtcdServer(data_dir, extra_client_hosts=extra_client_hosts)
    try:
        server.start()
        yield server
    finally:
        server.stop()
