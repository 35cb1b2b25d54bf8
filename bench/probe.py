"""`python -m bench.probe <meshcrypt arguments>`: the `meshcrypt` command, watched by the benchmark.

The command runs unchanged; three environment variables add instrumentation, for benchmarks only:

* `MESHCRYPT_BENCH_PROBE=<unix datagram socket>`: after each dataplane apply the agent sends
  ``apply <start> <end> <full> <ok>`` (wall-clock seconds; full = the apply re-read the kernel; ok = it
  succeeded) — the moment the kernel is programmed, as seen by the only thread that programs it. At
  start it sends ``boot <time>``, before meshcrypt is imported. Sends never block: a datagram the
  benchmark does not read in time is dropped.
* `MESHCRYPT_BENCH_PROFILE=<path prefix>`: cProfile the event loop thread and the dataplane thread
  (inside each apply) from the start; each SIGUSR2 ends the current profiling window, writing
  ``<prefix>.<window>.loop.pstats`` and ``<prefix>.<window>.dataplane.pstats`` (window 1, 2, …), or
  starts the next one. A window still open at exit is written too. Read them with
  `python -m bench.probe --report <prefix>.<window>` (or `python -m pstats`).
* `MESHCRYPT_BENCH_PRELOAD=<file.py>[,…]`: run these files before the agent starts, e.g. to try a
  change to meshcrypt by monkeypatching it, without touching the source tree.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import runpy
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

PROBE_ENV = "MESHCRYPT_BENCH_PROBE"
PROFILE_ENV = "MESHCRYPT_BENCH_PROFILE"
PRELOAD_ENV = "MESHCRYPT_BENCH_PRELOAD"


class _Probe:
    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.connect(path)
        self._sock.setblocking(False)

    def send(self, *fields: object) -> None:
        try:
            self._sock.send(" ".join(str(f) for f in fields).encode())
        except OSError:
            pass  # the benchmark is gone or behind: never slow the agent down


class _Profiles:
    """Profiling windows: both threads' profiles, written out when a window ends."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.window = 0
        self.loop = cProfile.Profile()
        self.apply: cProfile.Profile | None = None

    def start(self) -> None:
        self.window += 1
        self.loop = cProfile.Profile()
        self.apply = cProfile.Profile()
        self.loop.enable()

    def stop(self) -> None:
        if self.apply is None:
            return
        self.loop.disable()
        self.loop.dump_stats(f"{self.prefix}.{self.window}.loop.pstats")
        self.apply.dump_stats(f"{self.prefix}.{self.window}.dataplane.pstats")
        self.apply = None

    def toggle(self, signum: int, frame: FrameType | None) -> None:
        if self.apply is None:
            self.start()
        else:
            self.stop()


def _instrument(probe: _Probe | None, profiles: _Profiles | None) -> None:
    from meshcrypt.agent.dataplane import Dataplane

    apply: Callable[[Dataplane], None] = Dataplane.apply
    queue_resync: Callable[[Dataplane], None] = Dataplane.queue_resync
    full = [False]

    def queued(self: Dataplane) -> None:
        full[0] = True
        queue_resync(self)

    def applied(self: Dataplane) -> None:
        was_full, full[0] = full[0], False
        ok = False
        start = time.time()
        profile = None if profiles is None else profiles.apply
        if profile is not None:
            profile.enable()
        try:
            apply(self)
            ok = True
        finally:
            if profile is not None:
                profile.disable()
            if probe is not None:
                probe.send("apply", f"{start:.6f}", f"{time.time():.6f}", int(was_full), int(ok))
            if not ok:
                full[0] = full[0] or was_full

    Dataplane.queue_resync = queued  # type: ignore[method-assign]
    Dataplane.apply = applied  # type: ignore[method-assign]


def report(prefix: str, limit: int = 25) -> None:
    """Print the top functions by cumulative and by own time of both profiles."""
    for part in ("loop", "dataplane"):
        path = f"{prefix}.{part}.pstats"
        if not os.path.exists(path):
            continue
        print(f"==== {part} thread: {path}")
        try:
            stats = pstats.Stats(path)
        except (TypeError, EOFError):
            print("(nothing recorded)")
            continue
        stats.sort_stats("cumulative").print_stats(limit)
        stats.sort_stats("tottime").print_stats(limit)


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--report"]:
        report(argv[1])
        return 0
    probe_path = os.environ.pop(PROBE_ENV, "")
    profile_prefix = os.environ.pop(PROFILE_ENV, "")
    preload = [f for f in os.environ.pop(PRELOAD_ENV, "").split(",") if f]
    probe = _Probe(probe_path) if probe_path else None
    if probe is not None:
        probe.send("boot", f"{time.time():.6f}")
    profiles = _Profiles(profile_prefix) if profile_prefix else None
    if profiles is not None:
        profiles.start()
        signal.signal(signal.SIGUSR2, profiles.toggle)
    try:
        from meshcrypt.cli.main import main as meshcrypt

        for path in preload:
            runpy.run_path(path)
        _instrument(probe, profiles)
        return meshcrypt(argv)
    finally:
        if profiles is not None:
            profiles.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
