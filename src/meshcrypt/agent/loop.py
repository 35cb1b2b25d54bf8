"""The agent's main loop: one asyncio loop, one writer of the dataplane.

::

    etcd ──Syncer──► ClusterView ──► Calculator            LinkMonitor ──► link events
                      (decode,         │ flush()                               │
                       config layers)  ▼                                       ▼
                                   dataplane task: dispatch → Dataplane.apply() in the dataplane
                                   thread; retry with backoff; resync every RouteRefreshInterval
                                        │ keys reported by the managers
                                        ▼
                                   status task: register the Node, claim blocks, publish keys,
                                   tunnel addresses (etcd I/O; never delays the dataplane)

Producers (the syncer's callbacks, the link monitor, timers) only record what changed and wake a
task. The dataplane task drains everything recorded so far as one batch: the calculator's flush goes
to the managers, then one `apply()`. An error leaves the work queued (the managers keep their dirty
state) and the task retries after 0.1 s, doubling up to 30 s. The status task does the datastore
writes in its own time, so an etcd outage never holds up the kernel — traffic keeps flowing with the
last known state — and its own failures are retried the same way.

With host encryption, a long outage is different: the datastore may be unreachable *because* of
WireGuard (`meshcrypt.agent.bootstrap`). The watchdog task reports the syncer's state to a
`DatastoreWatchdog`; when it expires, the last resort removes our WireGuard configuration and points
the datastore client at every endpoint again, and the dataplane task *holds* (applies nothing, so the
managers do not recreate the device with a key nobody knows) until the datastore answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface

from meshcrypt.adapters.backend import Backend
from meshcrypt.agent.agent_metrics import AgentMetrics
from meshcrypt.agent.bootstrap import DatastoreWatchdog
from meshcrypt.agent.cluster import ClusterView
from meshcrypt.agent.dataplane import (
    FAMILIES,
    Dataplane,
    IncomingMark,
    MtuSource,
    no_mtu_detection,
)
from meshcrypt.calc.calculator import Calculator
from meshcrypt.datastore import ipam, registration
from meshcrypt.datastore.node_status import KeyPublisher, normalise_public_key
from meshcrypt.datastore.syncer import Backoff, Snapshot, Syncer
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.errors import ConfigError, MeshcryptError
from meshcrypt.model.keys import Key
from meshcrypt.model.net import IPFamily
from meshcrypt.model.resources import NodeResource
from meshcrypt.ports import Datastore, EventKind, KeyValue, Sysfs, WatchEvent
from meshcrypt.wireguard.mtu import MtuDetector

log = logging.getLogger(__name__)

RETRY_INITIAL = 0.1
RETRY_MAX = 30.0
DATASTORE_POLL = 1.0  # how often the watchdog task looks at the syncer's state

#: The watchdog's last resort: remove our WireGuard configuration and rebuild the datastore client;
#: True when something was removed (then the dataplane holds until the datastore answers).
LastResort = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class HostEncryptionParts:
    """What host encryption needs beyond the managers (built in `main`; fakes in tests)."""

    incoming_mark: IncomingMark | None = None  # the nftables mark on incoming WireGuard UDP
    watchdog: DatastoreWatchdog | None = None
    last_resort: LastResort | None = None  # run when the watchdog expires


@dataclass(frozen=True, slots=True)
class NodeAddresses:
    """The node's own addresses to register (None: leave the stored value alone)."""

    ipv4: IPv4Interface | None = None
    ipv6: IPv6Interface | None = None


@dataclass(slots=True)
class _Retry:
    """When a failed job may run again."""

    backoff: Backoff = field(default_factory=lambda: Backoff(RETRY_INITIAL, RETRY_MAX))
    at: float | None = None

    def failed(self, now: float) -> float:
        delay = self.backoff.next_delay()
        self.at = now + delay
        return delay

    def succeeded(self) -> None:
        self.backoff.reset()
        self.at = None


class Agent:
    """Wires the syncer, the calculation, the dataplane and the status writes together."""

    def __init__(
        self,
        nodename: str,
        datastore: Datastore,
        backend: Backend,
        sysfs: Sysfs,
        *,
        addresses: Callable[[], NodeAddresses],
        env_layer: dict[str, object],
        mtu_detector: MtuDetector | None = None,
        host_encryption: HostEncryptionParts | None = None,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nodename = nodename
        self._datastore = datastore
        self._mtu = mtu_detector
        mtu_source: MtuSource = mtu_detector if mtu_detector is not None else no_mtu_detection
        parts = host_encryption if host_encryption is not None else HostEncryptionParts()
        self.dataplane = Dataplane(
            nodename, backend, sysfs, self._on_key, mtu_source, incoming_mark=parts.incoming_mark
        )
        self._watchdog = parts.watchdog
        self._last_resort = parts.last_resort
        self.holding = False  # the watchdog removed WireGuard: apply nothing until etcd answers
        self._apply_lock = asyncio.Lock()  # an apply and the last resort never overlap
        self._addresses = addresses
        self._clock = clock
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.calc = Calculator(nodename)
        self.cluster = ClusterView(nodename, env_layer, self.calc)
        self.syncer = Syncer(datastore, self._on_snapshot, self._on_event)
        self.publisher = KeyPublisher(datastore, nodename)
        self.config: FelixConfig | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataplane")
        self._stop = asyncio.Event()
        self._dataplane_wake = asyncio.Event()
        self._status_wake = asyncio.Event()
        self._link_events: list[tuple[str, int, bool, bool]] = []
        self._links_lost = False  # the link monitor overflowed: re-read the host MTU
        self._rebuilt: list[IPFamily] = []  # families whose manager the last reconfigure rebuilt
        self._resync_at = 0.0  # the next periodic full resync (set with the first configuration)
        self._loop: asyncio.AbstractEventLoop | None = None  # set by run()
        self._full_resync_pending = True
        self._first_change_at: float | None = None
        self._dataplane_retry = _Retry()
        self._status_retry = _Retry()
        self._keys: dict[IPFamily, str] = {}  # the key each manager reported last ("" = none)
        # Families whose key we asked to publish and have not seen in our Node since: until then
        # a Node event showing another key is an older revision, not someone overwriting ours.
        self._awaiting_echo: set[IPFamily] = set()
        self._registered = False
        self._tunnels_dirty = True
        self._blocks_dirty = True
        self.applied_once = False
        self.last_apply_ok = False
        self.on_config_change: list[Callable[[FelixConfig], None]] = []

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`. The dataplane is left as it is (traffic keeps flowing)."""
        self._loop = asyncio.get_running_loop()
        tasks = [
            asyncio.create_task(self.syncer.run(), name="syncer"),
            asyncio.create_task(self._dataplane_task(), name="dataplane"),
            asyncio.create_task(self._status_task(), name="status"),
        ]
        if self._watchdog is not None and self._watchdog.enabled:
            tasks.append(asyncio.create_task(self._watchdog_task(self._watchdog), name="watchdog"))
        stop = asyncio.create_task(self._stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]  # a bug: surface it
        finally:
            self.syncer.stop()
            for task in [*tasks, stop]:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._executor.shutdown(wait=True, cancel_futures=True)

    def stop(self) -> None:
        self._stop.set()

    @property
    def ready(self) -> bool:
        return self.syncer.synced.is_set() and self.last_apply_ok and not self.holding

    # -- producers ----------------------------------------------------------------------------

    def _changed(self) -> None:
        if self._first_change_at is None:
            self._first_change_at = self._clock()
        self._dataplane_wake.set()

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        self._datastore_reachable()
        for kv in snapshot.changed:
            self.cluster.upsert(kv)
        for key in snapshot.removed:
            self.cluster.delete(key)
        log.info(
            "Datastore snapshot at revision %d: %d keys (%d changed, %d removed)",
            snapshot.revision,
            len(snapshot.kvs),
            len(snapshot.changed),
            len(snapshot.removed),
        )
        if not snapshot.first:
            # After an outage, check the kernel too: it may have been changed meanwhile.
            self._full_resync_pending = True
        # The status task skips its writes while the syncer is out of step (an outage): run them now.
        self._status_wake.set()
        self._after_datastore_change()

    def _on_event(self, event: WatchEvent) -> None:
        if event.kind is EventKind.PUT:
            self.cluster.upsert(KeyValue(event.key, event.value, event.mod_revision, 0))
        else:
            self.cluster.delete(event.key)
        self._after_datastore_change()

    def _after_datastore_change(self) -> None:
        cluster = self.cluster
        if cluster.pools_changed:
            cluster.pools_changed = False
            self._blocks_dirty = self._tunnels_dirty = True
            self._status_wake.set()
        if cluster.own_node_changed:
            cluster.own_node_changed = False
            self._own_node_changed()
        self._changed()

    def on_link_event(self, name: str, ifindex: int, up: bool, present: bool) -> None:
        self._link_events.append((name, ifindex, up, present))
        self._dataplane_wake.set()

    def on_link_events_lost(self) -> None:
        """The link monitor overflowed: re-read everything at the next apply."""
        self._full_resync_pending = True
        self._links_lost = True
        self._dataplane_wake.set()

    def _own_node_changed(self) -> None:
        node = self.cluster.own_node
        if node is None:
            if self._registered:
                log.warning(
                    "Node %s was deleted from the datastore; registering it again", self.nodename
                )
                self._registered = False
                self._blocks_dirty = True
            self._status_wake.set()
            return
        for family in FAMILIES:
            wanted = self._keys.get(family)
            stored = self._stored_key(node, family)
            if wanted is None or stored == wanted:
                self._awaiting_echo.discard(family)
            elif family not in self._awaiting_echo:
                log.warning(
                    "The %s public key of node %s in the datastore is %r, not ours; restoring it",
                    family.label,
                    self.nodename,
                    stored,
                )
                self._request_key(family, wanted)
        self._tunnels_dirty = True
        self._status_wake.set()

    @staticmethod
    def _stored_key(node: NodeResource, family: IPFamily) -> str:
        return normalise_public_key(
            node.public_key if family is IPFamily.V4 else node.public_key_v6
        )

    def _request_key(self, family: IPFamily, text: str) -> None:
        """Publish `text` as our key; events of our Node that do not show it yet are older."""
        node = self.cluster.own_node
        if node is None or self._stored_key(node, family) != text:
            self._awaiting_echo.add(family)
        self.publisher.request(family, text)

    def _on_key(self, family: IPFamily, key: Key) -> None:
        # Called by a manager during apply, in the dataplane thread: hand over to the loop.
        assert self._loop is not None, "applies run only inside run()"
        self._loop.call_soon_threadsafe(self._key_reported, family, normalise_public_key(key))

    def _key_reported(self, family: IPFamily, text: str) -> None:
        if self._keys.get(family) != text:
            log.info("%s public key of this node is now %r", family.label, text)
        self._keys[family] = text
        self._request_key(family, text)
        self._tunnels_dirty = True
        self._status_wake.set()

    # -- the watchdog task -------------------------------------------------------------------

    async def _watchdog_task(self, watchdog: DatastoreWatchdog) -> None:
        """Report the syncer's state to the watchdog; run the last resort when it expires."""
        expiries = asyncio.create_task(watchdog.run(self._watchdog_expired), name="watchdog-run")
        try:
            while True:
                if not self.syncer.synced.is_set():
                    watchdog.unreachable()
                await asyncio.sleep(DATASTORE_POLL)
        finally:
            expiries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiries

    def _datastore_reachable(self) -> None:
        if self._watchdog is not None:
            self._watchdog.reachable()
        if self.holding:
            log.info("The datastore answers again: programming WireGuard again")
            self.holding = False
            self._dataplane_wake.set()

    async def _watchdog_expired(self) -> None:
        if self._last_resort is None:
            return
        async with self._apply_lock:
            try:
                removed = await self._last_resort()
            except MeshcryptError as exc:
                log.error("The watchdog's last resort failed: %s", exc)
                return
        if removed:
            # The rebuilt datastore client makes the syncer list again; its snapshot ends the hold.
            log.warning("WireGuard removed; holding it until the datastore answers")
            self.holding = True
            self._full_resync_pending = True

    # -- the dataplane task -------------------------------------------------------------------

    async def _dataplane_task(self) -> None:
        await self.syncer.synced.wait()
        while True:
            await self._wait(self._dataplane_wake, self._dataplane_deadline())
            self._dataplane_wake.clear()
            await self._dataplane_round()

    def _dataplane_deadline(self) -> float | None:
        deadlines = [self._resync_at] if self.config is not None else []
        if self._dataplane_retry.at is not None:
            deadlines.append(self._dataplane_retry.at)
        return min(deadlines) if deadlines else None

    async def _wait(self, event: asyncio.Event, deadline: float | None) -> None:
        timeout = None if deadline is None else max(0.0, deadline - self._clock())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: it can lose a cancellation
                await event.wait()

    async def _dataplane_round(self) -> None:
        async with self._apply_lock:
            if self.holding:
                return  # the watchdog removed WireGuard: wait for the datastore to answer
            await self._dataplane_round_locked()

    async def _dataplane_round_locked(self) -> None:
        now = self._clock()
        if self._dataplane_retry.at is not None and now < self._dataplane_retry.at:
            return  # woken by new work while backing off: it waits for the retry
        events, self._link_events = self._link_events, []
        self._reconfigure_if_needed(self._host_mtu_changed(events))
        if self.config is None:
            return
        messages = self.calc.flush()
        rebuilt = self._rebuilt
        self._rebuilt = []
        if rebuilt:
            self.dataplane.dispatch_to([f for f in FAMILIES if f not in rebuilt], messages)
            self.dataplane.dispatch_to(rebuilt, self.calc.snapshot())
        else:
            self.dataplane.dispatch(messages)
        for event in events:
            self.dataplane.on_link_event(*event)
        full = self._full_resync_pending or now >= self._resync_at
        if full:
            self._full_resync_pending = False
            self._resync_at = now + self.config.route_refresh_interval
            self.dataplane.queue_resync()
        started = self._clock()
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.dataplane.apply)
        except MeshcryptError as exc:
            self.last_apply_ok = False
            delay = self._dataplane_retry.failed(self._clock())
            log.warning("Programming the dataplane failed (%s); retrying in %.1f s", exc, delay)
            self._full_resync_pending = self._full_resync_pending or full
            return
        finished = self._clock()
        self._dataplane_retry.succeeded()
        self.last_apply_ok = self.applied_once = True
        if full:
            self.metrics.full_resync.observe(finished - started)
        if self._first_change_at is not None:
            self.metrics.event_to_programmed.observe(finished - self._first_change_at)
            self._first_change_at = None
        self.metrics.update_from(self.dataplane, self.cluster)

    def _host_mtu_changed(self, events: list[tuple[str, int, bool, bool]]) -> bool:
        """Re-read the host MTU after events on underlay interfaces; True when it changed."""
        lost, self._links_lost = self._links_lost, False
        if self._mtu is None or not (lost or any(self._mtu.relevant(e[0]) for e in events)):
            return False
        try:
            return self._mtu.refresh()
        except MeshcryptError as exc:
            log.warning("Cannot re-read the host MTU: %s", exc)
            return False

    def _reconfigure_if_needed(self, mtu_changed: bool = False) -> None:
        if not self.cluster.config_changed and not mtu_changed and self.config is not None:
            return
        self.cluster.config_changed = False
        try:
            config = self.cluster.felix_config()
        except (ConfigError, ValueError) as exc:
            log.error("The configuration layers do not combine (%s); keeping the previous one", exc)
            if self.config is not None:
                return
            config = FelixConfig()
        if config == self.config and not mtu_changed:
            return
        first = self.config is None
        self.config = config
        self._rebuilt = self.dataplane.configure(config)
        if first:
            self._resync_at = self._clock() + config.route_refresh_interval
        self._tunnels_dirty = self._blocks_dirty = True
        self._status_wake.set()
        for callback in self.on_config_change:
            callback(config)

    # -- the status task ----------------------------------------------------------------------

    async def _status_task(self) -> None:
        while True:
            await self._wait(self._status_wake, self._status_retry.at)
            self._status_wake.clear()
            if self._status_retry.at is not None and self._clock() < self._status_retry.at:
                continue
            try:
                await self._status_round()
            except MeshcryptError as exc:
                delay = self._status_retry.failed(self._clock())
                log.warning("Datastore update failed (%s); retrying in %.1f s", exc, delay)
                self._status_wake.set()
            else:
                self._status_retry.succeeded()

    async def _status_round(self) -> None:
        if not self._registered:
            addresses = await asyncio.get_running_loop().run_in_executor(None, self._addresses)
            await registration.ensure_node(
                self._datastore, self.nodename, addresses.ipv4, addresses.ipv6
            )
            self._registered = True
        if not self.syncer.synced.is_set() or self.config is None:
            return  # pools and configuration are not known yet
        if self._blocks_dirty:
            pools = list(self.cluster.pools.values())
            for family in FAMILIES:
                if ipam.usable_pools(pools, family):
                    block = await ipam.claim_block(self._datastore, self.nodename, family, pools)
                    if block is not None:
                        log.debug("Node %s has %s block %s", self.nodename, family.label, block)
            self._blocks_dirty = False
        if self.publisher.pending:
            await self.publisher.publish_pending()
            self._tunnels_dirty = True
        if self._tunnels_dirty and self.config is not None:
            await self._reconcile_tunnels(self.config)
            self._tunnels_dirty = False

    async def _reconcile_tunnels(self, config: FelixConfig) -> None:
        pools = list(self.cluster.pools.values())
        for family in FAMILIES:
            family_config = config.for_family(family)
            await registration.reconcile_tunnel_address(
                self._datastore,
                self.nodename,
                family,
                wireguard_enabled=family_config.enabled,
                host_encryption=family_config.host_encryption,
                pools=pools,
            )
