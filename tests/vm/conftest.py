"""Fixtures for tests that run inside a virtme-ng VM whose kernel has the WireGuard module.

The tests in this directory come in two kinds:

* in-VM tests request `vm_kernel` (directly or through `wg_pair`). On the host they are skipped; in
  the VM (`scripts/vm-run` sets MESHCRYPT_IN_VM=1) anything missing is a failure, not a skip.
* `test_vm_suite.py` is the launcher: on the host it boots one VM and runs every test of this
  directory inside it, so a plain `pytest` (or `./dev test`) covers them with a single boot.

A new kernel-level test only has to live here and request `vm_kernel` or `wg_pair`.
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
        pytest.skip("runs inside the VM, launched by tests/vm/test_vm_suite.py or scripts/vm-run")
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
