"""Writes under /proc/sys and /sys, mapped onto the error hierarchy.

`FileSysfs()` writes in the agent's own namespaces. `FileSysfs(netns=NAME)` writes as seen from a
named network namespace (sysfs's `class/net` and `/proc/sys/net` are per namespace), through
`ip netns exec`, which remounts /sys for that namespace; tests and the lab use it. Writes use
`os.write` (not buffered file objects, whose errors surface late or not at all).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

from meshcrypt.model.errors import kernel_error

_WRITER = """
import os, sys
try:
    fd = os.open(sys.argv[1], os.O_WRONLY)
    try:
        os.write(fd, sys.argv[2].encode())
    finally:
        os.close(fd)
except OSError as exc:
    sys.exit(exc.errno or 200)
"""


class FileSysfs:
    """`ports.Sysfs` over plain file writes."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns

    def write(self, path: str, value: str) -> None:
        if self._netns is None:
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, value.encode())
                finally:
                    os.close(fd)
            except OSError as exc:
                raise kernel_error(f"write {value!r} to {path}", exc.errno or errno.EIO) from exc
            return
        # A child in the namespace writes with os.write and exits with the errno, so the kernel's
        # answer (EOPNOTSUPP for threaded NAPI on a TUN) survives the trip.
        cmd = ["ip", "netns", "exec", self._netns, sys.executable, "-c", _WRITER, path, value]
        done = subprocess.run(cmd, capture_output=True, timeout=10, check=False)
        if done.returncode != 0:
            err = done.returncode if done.returncode < 200 else errno.EIO
            raise kernel_error(f"write {value!r} to {path} in netns {self._netns}", err)
