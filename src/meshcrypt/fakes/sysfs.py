"""An in-memory `/proc/sys` and `/sys` implementing `ports.Sysfs`."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable

from meshcrypt.fakes.faults import Faults, Op
from meshcrypt.fakes.invariants import InvariantViolation
from meshcrypt.model.errors import kernel_error

_NET_CLASS = "/sys/class/net/"
_ROOTS = ("/proc/sys/", "/sys/")


class FakeSysfs:
    """Records writes. Paths under a refused prefix raise NotSupported, as a kernel that lacks the
    setting does (e.g. `/sys/class/net/<if>/threaded` on old kernels). With `link_exists`, a write under
    `/sys/class/net/<name>/` for a missing link raises NotFound (ENOENT)."""

    def __init__(
        self,
        *,
        faults: Faults | None = None,
        refuse_prefixes: Iterable[str] = (),
        link_exists: Callable[[str], bool] | None = None,
    ) -> None:
        self.faults = faults if faults is not None else Faults()
        self.refused: set[str] = set(refuse_prefixes)
        self._link_exists = link_exists
        self.values: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []

    @property
    def write_count(self) -> int:
        """Every write attempted, including refused and failed ones."""
        return len(self.calls)

    def refuse(self, prefix: str) -> None:
        self.refused.add(prefix)

    def allow(self, prefix: str) -> None:
        self.refused.discard(prefix)

    def read(self, path: str) -> str | None:
        """The last value written to `path`, or None."""
        return self.values.get(path)

    def write(self, path: str, value: str) -> None:
        self.calls.append((path, value))
        if not path.startswith(_ROOTS) or "/../" in path:
            raise InvariantViolation(f"sysfs write outside /proc/sys and /sys: {path!r}")
        self.faults.check(Op.SYSFS_WRITE)
        if self._link_exists is not None and path.startswith(_NET_CLASS):
            name = path[len(_NET_CLASS) :].split("/", 1)[0]
            if not self._link_exists(name):
                raise kernel_error(f"write {path}", errno.ENOENT)
        if any(path.startswith(prefix) for prefix in self.refused):
            raise kernel_error(f"write {path}", errno.EOPNOTSUPP)
        self.values[path] = value
