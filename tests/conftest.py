"""Test-suite wide configuration.

Tests marked `integration` need root, network namespaces, wireguard-go and etcd; where that is missing
they are skipped with the reason, so `pytest` runs anywhere and `./dev test` as root on a set-up
machine runs everything. Tests marked `vm` need a kernel with the WireGuard module: they run inside a
virtme-ng VM (`scripts/vm-run`, the VM stage of `./dev test`) and are skipped everywhere else.

`--fail-on-skip` turns a run that skipped anything, or passed nothing, into a failure: the VM stage
uses it so the kernel tests cannot be skipped silently.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# A busy 2-core CI machine can stall any single example; Hypothesis' per-example deadline would turn
# that into a flaky failure, so it is off. Everything else keeps Hypothesis' defaults.
settings.register_profile("meshcrypt", deadline=None)
settings.load_profile("meshcrypt")

INTEGRATION_TOOLS = ("ip", "wg", "wireguard-go", "etcd", "nsenter", "unshare")
IN_VM = os.environ.get("MESHCRYPT_IN_VM") == "1"  # set by scripts/vm-run inside the guest


def _integration_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (network namespaces)"
    missing = [tool for tool in INTEGRATION_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"integration tests need {', '.join(missing)} on PATH (run ./dev setup)"
    return None


def vng_path() -> str | None:
    """virtme-ng's `vng`: beside this interpreter (the project's .venv/bin), else on PATH."""
    beside = Path(sys.executable).parent / "vng"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("vng")


def _vm_skip_reason() -> str | None:
    if IN_VM:
        return None  # the `vm_kernel` fixture fails, not skips, when the guest lacks something
    how = "scripts/vm-run --pytest tests/vm -m vm, or the VM stage of ./dev test"
    if vng_path() is None:
        return f"vm tests run inside a VM ({how}); virtme-ng is not installed (run ./dev setup)"
    return f"vm tests run inside a VM: {how}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fail-on-skip",
        action="store_true",
        help="fail the run when any test is skipped or none passes (the VM stage of ./dev test)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {"integration": _integration_skip_reason(), "vm": _vm_skip_reason()}
    for item in items:
        for marker, reason in reasons.items():
            if reason is not None and item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


_outcomes = {"passed": 0, "skipped": 0}
_fail_on_skip_message: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _outcomes["skipped"] += 1
    elif report.passed and report.when == "call":
        _outcomes["passed"] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not session.config.getoption("fail_on_skip") or exitstatus != pytest.ExitCode.OK:
        return
    if _outcomes["skipped"] or not _outcomes["passed"]:
        _fail_on_skip_message.append(
            f"--fail-on-skip: the run fails with {_outcomes['passed']} passed, {_outcomes['skipped']} skipped"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _fail_on_skip_message:
        terminalreporter.write_line(line, red=True, bold=True)
