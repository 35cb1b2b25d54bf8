"""A lab of the benchmark's own: its own folder, prefix and underlay, always brought down.

`lab(...)` runs `meshcrypt lab up` through the lab's modules (`meshcrypt.lab.up`) in a fresh tmp
folder with prefix `mcbench` and a free 192.168.150–199.0/24 underlay, so a developer's lab
(`mclab`, 192.168.50.0/24) and the test labs (192.168.200–254) are never touched, and `lab down`s
it in a `finally` (also on Ctrl-C, and on SIGTERM with `sigterm_unwinds`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from types import FrameType

from meshcrypt.lab.config import LabConfig
from meshcrypt.lab.down import down
from meshcrypt.lab.state import LabState
from meshcrypt.lab.up import up

PREFIX = "mcbench"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_underlay() -> IPv4Network:
    """A 192.168.X.0/24, X in 150..199, with no address on this host."""
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    for x in range(150, 200):
        if f" 192.168.{x}." not in out:
            return IPv4Network(f"192.168.{x}.0/24")
    raise RuntimeError("no free 192.168.150-199.0/24 for the benchmark's lab")


@contextlib.contextmanager
def lab(nodes: int, pods_per_node: int = 1, agents: bool = True) -> Iterator[LabState]:
    """A lab up (with `agents`, converged); removed at the end whatever happened."""
    with tempfile.TemporaryDirectory(prefix="mcbench-") as tmp:
        lab_dir = Path(tmp) / "lab"
        config = LabConfig(
            nodes=nodes,
            pods_per_node=pods_per_node,
            agents=agents,
            prefix=PREFIX,
            underlay_v4=free_underlay(),
            converge_timeout=180.0,
        )
        log(f"lab: {nodes} nodes in {lab_dir}, prefix {PREFIX}, underlay {config.underlay_v4}")
        try:
            yield up(config, lab_dir, lambda line: None)
        finally:
            left = down(lab_dir, PREFIX, lambda line: None)
            log("lab down" + (f"; NOT removed: {'; '.join(left)}" if left else ""))


def machine() -> dict[str, str]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_at_start": f"{os.getloadavg()[0]:.2f}",
    }


def machine_line(m: dict[str, str]) -> str:
    return (
        f"{m['date']}: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, "
        f"Python {m['python']}, load {m['load_at_start']} at start"
    )


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every `finally` cleans up."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
