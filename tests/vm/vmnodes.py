"""Helpers shared by the in-VM tests: running commands, and the namespaces the tests build."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass

import pytest

IN_VM = os.environ.get("MESHCRYPT_IN_VM") == "1"
WG_IFACE = "wireguard.cali"
VM_TOOLS = ("ip", "wg", "ping", "modprobe")


def run(*cmd: str) -> str:
    """Run a command, fail the test with its output when it fails, return its stdout."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class VmNode:
    """A network namespace joined to its twin by a veth, with a kernel WireGuard link made by the test."""

    netns: str
    underlay: ipaddress.IPv4Address
    tunnel: ipaddress.IPv4Address

    def run(self, *cmd: str) -> str:
        return run("ip", "netns", "exec", self.netns, *cmd)
