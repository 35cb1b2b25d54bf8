"""Fixtures for tests that run inside a virtme-ng VM whose kernel has the WireGuard module.

`scripts/vm-run` boots the VM and sets MESHCRYPT_IN_VM=1 inside it; the VM stage of `./dev test` runs
`scripts/vm-run --pytest tests/vm -m vm --fail-on-skip`, one boot for every test here. Tests request
`vm_kernel` (directly or through `ns_pair`): on the host they are skipped; in the VM anything missing
is a failure, not a skip.

A new kernel-level test only has to live here, carry the `vm` marker and request `vm_kernel` or
`ns_pair`.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from .vmnodes import IN_VM, VM_TOOLS, VmNode, run


@pytest.fixture(scope="session")
def vm_kernel() -> None:
    """Inside the VM: the WireGuard module is loaded. On the host: skip."""
    if not IN_VM:
        pytest.skip("runs inside the VM: scripts/vm-run --pytest tests/vm -m vm")
    missing = [tool for tool in VM_TOOLS if shutil.which(tool) is None]
    assert not missing, f"missing in the VM: {missing}"
    assert os.geteuid() == 0, "the VM runs tests as root"
    run("modprobe", "wireguard")


@pytest.fixture
def ns_pair(vm_kernel: None) -> Iterator[tuple[VmNode, VmNode]]:
    """Two namespaces joined by a veth (192.0.2.1/24 ↔ 192.0.2.2/24), removed at teardown."""
    tag = os.getpid()
    nodes = (
        VmNode(
            f"mcvm{tag}-a",
            ipaddress.IPv4Address("192.0.2.1"),
            ipaddress.IPv4Address("198.51.100.1"),
        ),
        VmNode(
            f"mcvm{tag}-b",
            ipaddress.IPv4Address("192.0.2.2"),
            ipaddress.IPv4Address("198.51.100.2"),
        ),
    )
    made: list[str] = []
    try:
        for node in nodes:
            run("ip", "netns", "add", node.netns)
            made.append(node.netns)
        a, b = nodes
        run(
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            a.netns,
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            b.netns,
        )
        for node in nodes:
            node.run("ip", "link", "set", "lo", "up")
            node.run("ip", "addr", "add", f"{node.underlay}/24", "dev", "eth0")
            node.run("ip", "link", "set", "eth0", "up")
        yield nodes
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False)
