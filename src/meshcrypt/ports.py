"""Narrow ports through which the managers reach the kernel, shaped by what the managers need.

Every method either succeeds or raises a `meshcrypt.model.errors.KernelError` subclass (NotFound,
AlreadyExists, NotSupported, or KernelError with the errno). Adapters live in `meshcrypt.adapters`;
stateful in-memory fakes in `meshcrypt.fakes`.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Generic, NamedTuple, Protocol, TypeVar

from meshcrypt.model.dataplane import Device, DeviceConfig, InterfaceAddress, Link, Route, Rule
from meshcrypt.model.net import IPFamily


class Netlink(Protocol):
    """Links, addresses, routes and rules of one network namespace."""

    def link_by_name(self, name: str) -> Link | None:
        """The link called `name`, or None when there is none."""
        ...

    def link_add_wireguard(self, name: str, mtu: int) -> None:
        """Create a WireGuard link (mtu 0 = backend default). Raises NotSupported without WireGuard."""
        ...

    def link_set_mtu(self, index: int, mtu: int) -> None: ...

    def link_set_up(self, index: int) -> None: ...

    def link_delete(self, index: int) -> None: ...

    def addresses(self, index: int, family: IPFamily) -> list[InterfaceAddress]: ...

    def address_add(self, index: int, address: InterfaceAddress) -> None: ...

    def address_delete(self, index: int, address: InterfaceAddress) -> None: ...

    def routes(self, table: int, family: IPFamily) -> list[Route]:
        """Every route of one family in one table (the dump is read to its end)."""
        ...

    def routes_replace(self, routes: Sequence[Route]) -> None:
        """Create or replace many routes in one batch."""
        ...

    def routes_delete(self, routes: Sequence[Route]) -> None:
        """Delete many routes in one batch; a route that is already gone is not an error."""
        ...

    def rules(self, family: IPFamily) -> list[Rule]: ...

    def rule_add(self, rule: Rule) -> None: ...

    def rule_delete(self, rule: Rule) -> None: ...

    def close(self) -> None: ...


class LinkLister(Protocol):
    """Every link of one network namespace (for MTU auto-detection, `meshcrypt.wireguard.mtu`)."""

    def links(self) -> list[Link]:
        """Name, index, kind, MTU, admin and operational state of every link, in index order."""
        ...


class WireguardDevices(Protocol):
    """The WireGuard configuration interface (kernel generic netlink or wireguard-go UAPI)."""

    def device(self, name: str) -> Device:
        """The device with all its peers. Raises NotFound when there is no such device."""
        ...

    def configure(self, name: str, config: DeviceConfig) -> None:
        """Apply device settings and many peer changes in one call (each peer at most once)."""
        ...

    def close(self) -> None: ...


class Sysfs(Protocol):
    """Writes under /proc/sys and /sys."""

    def write(self, path: str, value: str) -> None:
        """Write `value` to `path`. Raises NotSupported when the kernel refuses the setting."""
        ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class KeyValue(NamedTuple):
    """One etcd key with its value and revisions."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int


class EventKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


class WatchEvent(NamedTuple):
    kind: EventKind
    key: str
    value: bytes  # empty for DELETE
    mod_revision: int


class Datastore(Protocol):
    """An etcd v3 key-value store (asyncio). Errors: `DatastoreUnavailable`, `RevisionCompacted`."""

    async def get(self, key: str) -> KeyValue | None: ...

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` and the store revision the listing was taken at."""
        ...

    def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Events from `start_revision` on, in revision order, until cancelled or the link breaks."""
        ...

    async def txn(
        self,
        expect: Mapping[str, int],
        puts: Mapping[str, bytes],
        deletes: Sequence[str] = (),
    ) -> bool:
        """Atomically: if every key in `expect` has that mod_revision (0 = must not exist), apply
        the puts and deletes and return True; otherwise change nothing and return False."""
        ...

    async def close(self) -> None: ...


NetlinkFactory = Callable[[], Netlink]
WireguardFactory = Callable[[], WireguardDevices]


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


class CachedClient(Generic[C]):
    """A client made on first use and dropped (closed) after a failure, so the next use reconnects."""

    def __init__(self, factory: Callable[[], C]) -> None:
        self._factory = factory
        self._client: C | None = None

    def get(self) -> C:
        if self._client is None:
            self._client = self._factory()
        return self._client

    def reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a broken client may fail to close; it is dropped anyway
                pass
