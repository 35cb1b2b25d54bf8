"""Labs for tests: each in a tmp folder, with its own prefix and underlay, always removed at the end.

``lab = make_lab()`` picks a prefix (`mt<pid><n>`) and a free 192.168.<200–254>.0/24 underlay, so test
labs never touch a developer's lab (`mclab`, 192.168.50.0/24) or each other; ``lab.up(...)`` runs
`meshcrypt lab up` as a subprocess (the real CLI), ``lab.cli(...)`` any other lab command. Teardown
runs `lab down` for every lab made, even when the test failed. `assert_no_leftovers` is the thorough
check that nothing survived: namespaces, links, processes, mounts, the nftables table, the folder.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meshcrypt.adapters.lab_proc import ProcessId, cmdline, pids_in_netns
from meshcrypt.lab.state import LabState

_counter = itertools.count()
_taken: set[int] = set()
_lock = threading.Lock()


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def _free_net() -> int:
    """A third octet X in 200..254 with no 192.168.X.* address on this host and not handed out.

    The search starts at a place chosen by our PID, so test runs started at the same moment (which
    both see the same free networks) pick different ones; `lab up` refuses a duplicate anyway."""
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    with _lock:
        for x in (200 + (os.getpid() + i) % 55 for i in range(55)):
            if x not in _taken and f" 192.168.{x}." not in out:
                _taken.add(x)
                return x
    raise RuntimeError("no free 192.168.200-254.0/24 for a test lab")


@dataclass(eq=False)
class LabUnderTest:
    dir: Path
    prefix: str
    net: int
    processes: list[ProcessId] = field(default_factory=list)

    @property
    def underlay(self) -> str:
        return f"192.168.{self.net}.0/24"

    @property
    def underlay6(self) -> str:
        return f"fd00:{self.net}::/64"

    def bridge_ip(self, version: int = 4) -> str:
        return f"192.168.{self.net}.1" if version == 4 else f"fd00:{self.net}::1"

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "meshcrypt", "lab", *args]
        full_env = {**os.environ, "MESHCRYPT_LAB_DIR": str(self.dir), **(env or {})}
        return subprocess.run(
            cmd, capture_output=True, text=True, env=full_env, timeout=timeout, check=False
        )

    def up_args(self, *args: str) -> list[str]:
        return [
            "up",
            *("--prefix", self.prefix, "--underlay", self.underlay, "--underlay6", self.underlay6),
            *args,
        ]

    def up(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        res = self.cli(*self.up_args(*args), env=env)
        self.remember()
        return res

    def state(self) -> LabState:
        state = LabState.load(self.dir)
        assert state is not None, f"no lab state in {self.dir}"
        return state

    def remember(self) -> None:
        """Note every process the lab has recorded (and everything in its namespaces) so the
        leftover check can prove each one is gone."""
        state = LabState.load(self.dir)
        if state is None:
            return
        found = [n.holder for n in state.nodes] + [n.agent for n in state.nodes]
        if state.etcd is not None:
            found.append(state.etcd.process)
        ids = set()
        for name in [n.netns for n in state.nodes] + [p.netns for p in state.pods]:
            try:
                st = os.stat(f"/run/netns/{name}")
            except OSError:
                continue
            ids.add((st.st_dev, st.st_ino))
        found += [ProcessId.of(pid) for pid in pids_in_netns(ids)]
        self.processes += [p for p in found if p is not None and p not in self.processes]

    def down(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.remember()
        return self.cli("down", *args)

    def leftovers(self) -> list[str]:
        found = []
        netns = [n for n in os.listdir("/run/netns") if n.startswith(f"{self.prefix}-")]
        if netns:
            found.append(f"netns {netns}")
        links = subprocess.run(
            ["ip", "-o", "link"], capture_output=True, text=True, check=True
        ).stdout
        names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
        mine = [n for n in names if n.startswith(self.prefix)]
        if mine:
            found.append(f"links {mine}")
        alive = [p.pid for p in self.processes if p.running()]
        if alive:
            found.append(f"processes {alive}")
        strays = [
            pid
            for pid in (int(e) for e in os.listdir("/proc") if e.isdigit())
            if any(str(self.dir) in arg for arg in cmdline(pid))
        ]
        if strays:
            found.append(f"processes using the lab folder {strays}")
        mounts = [m for m in Path("/proc/mounts").read_text().splitlines() if self.prefix in m]
        if mounts:
            found.append(f"mounts {mounts}")
        tables = subprocess.run(
            ["nft", "list", "tables", "inet"], capture_output=True, text=True, check=False
        ).stdout
        if f"table inet {self.prefix}\n" in tables + "\n":
            found.append(f"nftables table inet {self.prefix}")
        if self.dir.exists():
            found.append(f"folder {self.dir}: {sorted(p.name for p in self.dir.iterdir())}")
        return found


def assert_no_leftovers(lab: LabUnderTest) -> None:
    left = lab.leftovers()
    assert not left, f"lab down left: {left}"


LabFactory = Callable[[], LabUnderTest]


def _new_lab(parent: Path) -> LabUnderTest:
    n = next(_counter)
    prefix = f"mt{_base36(os.getpid())}{_base36(n % 36)}"
    return LabUnderTest(parent / f"lab{n}", prefix, _free_net())


def _remove(lab: LabUnderTest) -> None:
    """`lab down`, whatever state the test left the lab in; the underlay is free again after."""
    try:
        res = lab.down()
        assert res.returncode == 0, f"lab down failed:\n{res.stdout}{res.stderr}"
        assert_no_leftovers(lab)
    finally:
        with _lock:
            _taken.discard(lab.net)


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[LabFactory]:
    """Factory of test labs (not yet up); every one is brought down at teardown."""
    made: list[LabUnderTest] = []

    def make() -> LabUnderTest:
        lab = _new_lab(tmp_path)
        made.append(lab)
        return lab

    yield make
    for lab in reversed(made):
        _remove(lab)


@pytest.fixture(scope="module")
def lab_no_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabUnderTest]:
    """One dual-stack lab without agents (2 nodes, 2 pods each), shared by a module's tests."""
    lab = _new_lab(tmp_path_factory.mktemp("lab"))
    try:
        res = lab.up("--nodes", "2", "--pods-per-node", "2", "--dual-stack", "--no-agents")
        assert res.returncode == 0, f"lab up failed:\n{res.stdout}{res.stderr}"
        yield lab
    finally:
        _remove(lab)


def etcd_get(lab: LabUnderTest, key: str, prefix: bool = False) -> list[tuple[str, Any]]:
    """(key, decoded JSON) under `key` (or every key starting with it) through etcd's JSON gateway."""
    import base64
    import urllib.request

    state = lab.state()
    assert state.etcd is not None
    body: dict[str, str] = {"key": base64.b64encode(key.encode()).decode()}
    if prefix:
        end = key[:-1] + chr(ord(key[-1]) + 1)
        body["range_end"] = base64.b64encode(end.encode()).decode()
    req = urllib.request.Request(
        f"{state.etcd.host_endpoint}/v3/kv/range",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        kvs = json.loads(resp.read()).get("kvs", [])
    return [
        (base64.b64decode(kv["key"]).decode(), json.loads(base64.b64decode(kv["value"])))
        for kv in kvs
    ]


def counted(report: str, what: str) -> int:
    """A count from `lab capture`'s report (`  plaintext pod traffic    80`)."""
    match = re.search(rf"^  {re.escape(what)}\s+(\d+)", report, re.MULTILINE)
    assert match, f"no {what!r} line in:\n{report}"
    return int(match.group(1))
