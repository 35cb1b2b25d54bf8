"""The scale benchmark at a small size: it runs end to end, its figures are real, nothing is left.

The figures themselves are not judged here (timed assertions do not belong in tests): the run must
have programmed what it claims (the benchmark checks every variant's peers and routes itself and
fails otherwise), produce every figure of the report, and remove its namespaces and bridge.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
N = 40


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _bridges() -> set[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True, check=True
    )
    return {line.split(":")[1].strip() for line in out.stdout.splitlines()}


def test_scale_benchmark_runs_and_cleans_up(tmp_path: Path) -> None:
    before = (_netns(), _bridges())
    out = tmp_path / "scale.json"
    argv = ["--sizes", str(N), "--delta-sizes", str(N), "--changes", "6"]
    argv += ["--steady-size", str(N), "--steady-seconds", "2", "--refresh", "1", "--rounds", "1"]
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", "scale", *argv, "--json", str(out)],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        stdout, _ = bench.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        bench.terminate()  # SIGTERM: the benchmark removes what it created
        stdout, _ = bench.communicate(timeout=60)
        pytest.fail(f"the benchmark did not finish in 240 s:\n{stdout[-3000:]}")
    assert bench.returncode == 0, stdout[-3000:]
    assert (_netns(), _bridges()) == before

    results = json.loads(out.read_text())
    [resync] = results["resync"]
    assert resync["n"] == N
    for figure in ("agent_s", "floor_s", "syncconf_s", "least_s", "least_overlap_s", "cpu_s"):
        assert resync[figure] > 0, figure
    assert resync["programming_s"] <= resync["agent_s"]
    assert 10 < resync["hwm_mb"] < 500
    delta = resync["delta"]
    assert delta["changes"] == 6 and delta["failures"] == 0
    assert 0 < delta["p50_ms"] <= delta["p99_ms"] <= delta["max_ms"]
    steady = resync["steady"]
    assert steady["resyncs"] >= 1  # RouteRefreshInterval 1 s over 2 s
    for line in ("agent / floor", "least Python agent, overlapped", "p99", "Steady state"):
        assert line in stdout, line
