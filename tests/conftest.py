"""Test-suite wide configuration.

Tests marked `integration` need root, network namespaces, wireguard-go and etcd; tests marked `vm`
need virtme-ng. Where that is missing they are skipped with the reason, so `pytest` runs anywhere and
`./dev test` as root on a set-up machine runs everything.
"""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import settings

# A busy 2-core CI machine can stall any single example; Hypothesis' per-example deadline would turn
# that into a flaky failure, so it is off. Everything else keeps Hypothesis' defaults.
settings.register_profile("meshcrypt", deadline=None)
settings.load_profile("meshcrypt")

INTEGRATION_TOOLS = ("ip", "wg", "wireguard-go", "etcd", "nsenter", "unshare")


def _integration_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (network namespaces)"
    missing = [tool for tool in INTEGRATION_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"integration tests need {', '.join(missing)} on PATH (run ./dev setup)"
    return None


def _vm_skip_reason() -> str | None:
    if shutil.which("vng") is None:
        return "vm tests need virtme-ng (vng) on PATH"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {"integration": _integration_skip_reason(), "vm": _vm_skip_reason()}
    for item in items:
        for marker, reason in reasons.items():
            if reason is not None and item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
