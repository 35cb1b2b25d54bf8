"""Stateful in-memory fakes of the ports, for unit tests of the managers.

One `FakeKernel` is one network namespace; `FakeNetlink` and `FakeWireguard` are its clients, made by
`kernel.netlink_factory()` and `kernel.wireguard_factory()`. Faults are armed on `kernel.faults`;
operation counts are read from `kernel.counters`. A caller bug raises `InvariantViolation`.
"""

from meshcrypt.fakes.clock import FakeClock
from meshcrypt.fakes.datastore import DatastoreOp, FakeDatastore
from meshcrypt.fakes.faults import Faults, Op
from meshcrypt.fakes.invariants import InvariantViolation
from meshcrypt.fakes.kernel import KEEP, Counters, FakeKernel, default_rules
from meshcrypt.fakes.netlink import FakeNetlink
from meshcrypt.fakes.sysfs import FakeSysfs
from meshcrypt.fakes.wireguard import FakeWireguard

__all__ = [
    "KEEP",
    "Counters",
    "DatastoreOp",
    "FakeClock",
    "FakeDatastore",
    "FakeKernel",
    "FakeNetlink",
    "FakeSysfs",
    "FakeWireguard",
    "Faults",
    "InvariantViolation",
    "Op",
    "default_rules",
]
