"""Open sockets inside a named network namespace (`/run/netns/<name>`, as `ip netns` makes them).

A socket belongs to the namespace its creating thread was in when it was created, and keeps it for
life. So the calling thread joins the target namespace with setns(2), creates the socket and joins
its own namespace again straight away; other threads are never affected (setns is per thread).
Python 3.11 has no `os.setns`, hence ctypes.

Namespaces are never created here: a missing one is `NotFound` (pyroute2's default of creating it
silently is the trap this avoids).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
from collections.abc import Iterator

from meshcrypt.model.errors import ConfigError, NotFound, kernel_error

log = logging.getLogger(__name__)

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_NETLINK_ROUTE = 0

_libc = ctypes.CDLL(None, use_errno=True)
_setns = _libc.setns
_setns.argtypes = (ctypes.c_int, ctypes.c_int)
_setns.restype = ctypes.c_int


def netns_path(name: str) -> str:
    """The bind-mount path of namespace `name`; refuses names that would escape /run/netns."""
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError("netns", name, "not a network namespace name")
    return os.path.join(NETNS_RUN_DIR, name)


def _join(fd: int, what: str) -> None:
    if _setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise kernel_error(f"setns into {what}", err)


@contextlib.contextmanager
def entered_netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside namespace `name`, then return to the original.

    Only synchronous code belongs in the body: anything else the thread runs meanwhile (an awaited
    coroutine, a signal handler) would run in the wrong namespace.
    """
    path = netns_path(name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound(f"network namespace {name} does not exist", errno.ENOENT) from exc
    except OSError as exc:
        raise kernel_error(f"open network namespace {name}", exc.errno or 0) from exc
    try:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _join(target, f"network namespace {name}")
            try:
                yield
            finally:
                # Failing to return would leave this thread in the wrong namespace for good; that
                # cannot be repaired here, so it is loud.
                try:
                    _join(original, "the original network namespace")
                except Exception:
                    log.critical("thread stuck in network namespace %s", name)
                    raise
        finally:
            os.close(original)
    finally:
        os.close(target)


def open_in_netns(
    name: str,
    family: int = socket.AF_NETLINK,
    kind: int = socket.SOCK_RAW,
    proto: int = _NETLINK_ROUTE,
) -> socket.socket:
    """A new socket created inside namespace `name` (by default a NETLINK_ROUTE socket)."""
    with entered_netns(name):
        try:
            return socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
        except OSError as exc:
            raise kernel_error(f"open socket in network namespace {name}", exc.errno or 0) from exc
