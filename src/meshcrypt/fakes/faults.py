"""One-shot and persistent fault injection for the fakes.

A test arms a fault for one operation; the next call of that operation raises and changes nothing.
`fired()` tells how many injected errors were actually raised, so a test can check that exactly one
error happened.
"""

from __future__ import annotations

import enum
import errno
from collections import Counter
from dataclasses import dataclass

from meshcrypt.model.errors import kernel_error


class Op(enum.Enum):
    """Every port operation of the fakes, plus the creation of clients."""

    NEW_NETLINK_CLIENT = "new netlink client"
    LINK_BY_NAME = "link_by_name"
    LINK_ADD = "link_add_wireguard"
    LINK_DELETE = "link_delete"
    LINK_SET_UP = "link_set_up"
    LINK_SET_MTU = "link_set_mtu"
    ADDRESS_LIST = "addresses"
    ADDRESS_ADD = "address_add"
    ADDRESS_DELETE = "address_delete"
    ROUTE_LIST = "routes"
    ROUTE_REPLACE = "routes_replace"
    ROUTE_DELETE = "routes_delete"
    RULE_LIST = "rules"
    RULE_ADD = "rule_add"
    RULE_DELETE = "rule_delete"
    NEW_WIREGUARD_CLIENT = "new wireguard client"
    WG_CONFIGURE = "configure"
    WG_DEVICE = "device"
    SYSFS_WRITE = "sysfs write"


@dataclass(frozen=True, slots=True)
class _Armed:
    error: Exception
    persistent: bool


class Faults:
    """Armed faults per operation, consumed in the order they were armed."""

    def __init__(self) -> None:
        self._armed: dict[Op, list[_Armed]] = {}
        self._fired: Counter[Op] = Counter()

    def fail_next(self, op: Op, error: Exception | None = None, persistent: bool = False) -> None:
        """Make the next call of `op` raise `error` (default: KernelError EIO).

        With `persistent=True` every later call fails too, until `clear(op)`.
        """
        if error is None:
            error = kernel_error(f"injected fault in {op.value}", errno.EIO)
        self._armed.setdefault(op, []).append(_Armed(error, persistent))

    def clear(self, op: Op | None = None) -> None:
        """Disarm the faults of `op`, or of every operation. Fired counts are kept."""
        if op is None:
            self._armed.clear()
        else:
            self._armed.pop(op, None)

    def armed(self, op: Op) -> bool:
        return bool(self._armed.get(op))

    def fired(self, op: Op | None = None) -> int:
        """How many injected errors `op` (or every operation) raised so far."""
        if op is None:
            return sum(self._fired.values())
        return self._fired[op]

    def check(self, op: Op) -> None:
        """Raise the armed error of `op`, if any. Called by the fakes before they change anything."""
        queue = self._armed.get(op)
        if not queue:
            return
        armed = queue[0]
        if not armed.persistent:
            queue.pop(0)
        self._fired[op] += 1
        raise armed.error
