"""The one exception hierarchy of meshcrypt.

::

    MeshcryptError
    ├── RetryableError               the main loop retries with back-off, then resyncs
    │   ├── WaitingForLink           the WireGuard link exists but is not up yet (state, not a crash)
    │   ├── UpdateFailed             a kernel update failed; the next apply does a full resync
    │   ├── KernelError              an adapter's netlink / UAPI / sysfs call failed (carries errno)
    │   │   ├── NotFound             ENOENT, ENODEV, ESRCH: the object is not there
    │   │   ├── AlreadyExists        EEXIST
    │   │   └── NotSupported         EOPNOTSUPP and friends: becomes a "not supported" state
    │   ├── StatusPublishError       publishing our public key failed
    │   ├── DatastoreUnavailable     no etcd endpoint answers (the agent keeps the dataplane as is)
    │   └── RevisionCompacted        a watch asked for history etcd no longer has: re-list
    └── PermanentError               retrying cannot help
        └── ConfigError              a configuration value is invalid (names the parameter)

Adapters translate errno values into these classes and chain the original exception.
"""

from __future__ import annotations

import errno as _errno


class MeshcryptError(Exception):
    """Base class of every error meshcrypt raises on purpose."""


class RetryableError(MeshcryptError):
    """The operation may succeed when retried."""


class PermanentError(MeshcryptError):
    """The operation cannot succeed without a change of input or configuration."""


class WaitingForLink(RetryableError):
    """The WireGuard link was created or set up but is not up yet."""

    def __init__(self, iface: str) -> None:
        super().__init__(f"waiting for wireguard link {iface} to come up")
        self.iface = iface


class UpdateFailed(RetryableError):
    """A dataplane update failed; the next apply performs a full resync."""


class StatusPublishError(RetryableError):
    """The public key could not be published."""


class DatastoreUnavailable(RetryableError):
    """No datastore endpoint answered."""


class RevisionCompacted(RetryableError):
    """The requested revision was compacted; the caller must list again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest available {compact_revision})")
        self.compact_revision = compact_revision


class KernelError(RetryableError):
    """A kernel (or wireguard-go) call failed with an errno."""

    def __init__(self, message: str, err: int = 0) -> None:
        super().__init__(message)
        self.errno = err


class NotFound(KernelError):
    """The object does not exist (ENOENT, ENODEV, ESRCH)."""


class AlreadyExists(KernelError):
    """The object already exists (EEXIST)."""


class NotSupported(KernelError):
    """The kernel or backend does not support the operation (EOPNOTSUPP)."""


class ConfigError(PermanentError):
    """A configuration value is invalid; the message names the parameter."""

    def __init__(self, param: str, value: object, reason: str) -> None:
        super().__init__(f"invalid value {value!r} for {param}: {reason}")
        self.param = param
        self.value = value
        self.reason = reason


_NOT_FOUND = {_errno.ENOENT, _errno.ENODEV, _errno.ESRCH, _errno.ENXIO}
_NOT_SUPPORTED = {_errno.EOPNOTSUPP, _errno.ENOTSUP, _errno.EAFNOSUPPORT, _errno.EPROTONOSUPPORT}


def kernel_error(message: str, err: int) -> KernelError:
    """Build the KernelError subclass that matches a (positive or negative) errno."""
    err = abs(err)
    text = f"{message}: {_errno.errorcode.get(err, str(err))} ({err})"
    if err in _NOT_FOUND:
        return NotFound(text, err)
    if err == _errno.EEXIST:
        return AlreadyExists(text, err)
    if err in _NOT_SUPPORTED:
        return NotSupported(text, err)
    return KernelError(text, err)
