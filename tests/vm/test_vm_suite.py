"""The launcher: boot one VM and run every in-VM test of tests/vm inside it (see conftest.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VM_RUN = REPO / "scripts" / "vm-run"


@pytest.mark.vm
@pytest.mark.skipif(
    os.environ.get("MESHCRYPT_IN_VM") == "1",
    reason="the launcher does not launch itself inside the VM",
)
def test_the_in_vm_suite_passes() -> None:
    cmd = [
        str(VM_RUN),
        "--pytest",
        "tests/vm",
        "-m",
        "vm",
        "--deselect",
        "tests/vm/test_vm_suite.py",
        "-p",
        "no:cacheprovider",
        "-rA",
        "-s",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
    # Shown with -s or when the test fails: the in-VM run's own report and timings.
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr[-4000:])
    assert proc.returncode == 0, f"scripts/vm-run exited {proc.returncode}"
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary
    assert not re.search(r"failed|error|skipped", summary), summary
