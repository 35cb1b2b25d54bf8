"""`python -m bench.probe <meshcrypt arguments>`: the `meshcrypt` command, watched by the benchmark.

The command runs unchanged; two environment variables add instrumentation, for benchmarks only:

* `MESHCRYPT_BENCH_PROBE=<unix datagram socket>`: after each dataplane apply the agent sends
  ``apply <start> <end> <full> <ok>`` (wall-clock seconds; full = the apply re-read the kernel; ok = it
  succeeded) — the moment the kernel is programmed, as seen by the only thread that programs it. At
  start it sends ``boot <time>``, before meshcrypt is imported. Sends never block: a datagram the
  benchmark does not read in time is dropped.
* `MESHCRYPT_BENCH_PROFILE=<path prefix>`: cProfile the event loop thread and the dataplane thread
  (each apply); at exit the statistics go to ``<prefix>.loop.pstats`` and
  ``<prefix>.dataplane.pstats`` (`python -m pstats`, or `python -m bench.probe --report <prefix>`).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import socket
import sys
import time
from collections.abc import Callable, Sequence

PROBE_ENV = "MESHCRYPT_BENCH_PROBE"
PROFILE_ENV = "MESHCRYPT_BENCH_PROFILE"


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


def _instrument(probe: _Probe | None, profile: cProfile.Profile | None) -> None:
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
        stats = pstats.Stats(path)
        stats.sort_stats("cumulative").print_stats(limit)
        stats.sort_stats("tottime").print_stats(limit)


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--report"]:
        report(argv[1])
        return 0
    probe_path = os.environ.pop(PROBE_ENV, "")
    profile_prefix = os.environ.pop(PROFILE_ENV, "")
    probe = _Probe(probe_path) if probe_path else None
    if probe is not None:
        probe.send("boot", f"{time.time():.6f}")
    loop_profile = cProfile.Profile() if profile_prefix else None
    apply_profile = cProfile.Profile() if profile_prefix else None
    if loop_profile is not None:
        loop_profile.enable()
    try:
        from meshcrypt.cli.main import main as meshcrypt

        _instrument(probe, apply_profile)
        return meshcrypt(argv)
    finally:
        if loop_profile is not None and apply_profile is not None:
            loop_profile.disable()
            loop_profile.dump_stats(f"{profile_prefix}.loop.pstats")
            apply_profile.dump_stats(f"{profile_prefix}.dataplane.pstats")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
