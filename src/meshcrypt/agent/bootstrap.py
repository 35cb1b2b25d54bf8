"""Start-up bootstrap with host encryption, and the last-resort watchdog (`reference-behavior.md` §4).

The race (calico#5125, here with etcd in Typha's place). Host encryption puts node-to-node host
traffic, the agent's own etcd connection included, through WireGuard. The private key lives only in
the kernel device, so a reboot (or a deleted device) means a new key::

      node A (rebooted: new key A2)                 node B (runs etcd; has A as a peer with A1)
      ─────────────────────────────                 ──────────────────────────────────────────
   1  agent starts, creates wireguard.cali (A2),
      programs peer B, routes B via the device
   2  TCP SYN to etcd B:2379 ═══ WireGuard (A2) ══▶ handshake from an unknown key: dropped
      (or, without a device: plaintext ─────────▶ accepted, but the reply...)
   3                     ◀═══ WireGuard (A1) ═════ ...is encrypted to A's old key A1:
      A no longer has A1: dropped                    A cannot decrypt it
   4  publish A2 in etcd?  needs etcd ── ✗           B learns A2 only from etcd ── ✗
      ════════ neither side can move: A never becomes ready (calico#5125) ════════

The same asymmetry arises when the agent restarts while its device survives but a *peer* rebooted:
we still hold the peer's old key, it holds our current one.

What this module does about it, per family (the decision table is in `meshcrypt.wireguard.bootstrap`):

* **before the agent connects**, `Bootstrapper.run` compares the device with what etcd says. If the
  device is missing, keyless or peerless, or its key differs from the published one, our WireGuard
  configuration is removed: the device is deleted (routes through it go with it, so traffic is
  direct again) and the published key is cleared, so the other nodes stop encrypting to the lost
  key and route to us directly; the manager later creates a fresh device and publishes its key.
  Otherwise the etcd endpoints that sit on nodes whose key is missing from our peers are dropped
  (asymmetric routing, as above); if none would be left, WireGuard is removed instead. The agent
  reads the configuration this needs (`read_bootstrap_config`) before anything else;
* **the fresh device**: the bootstrap leaves the other nodes routing to us directly, but our new
  device knows *their* keys and would route our host traffic, etcd connection included, to them
  encrypted with a key they have never seen: dropped, so the new key is never published (step 4
  above, one rung later; Felix never meets it because the Kubernetes API is outside the mesh).
  So the WireGuard manager routes host addresses directly until etcd shows the device's key
  (`ManagerOptions(hold_host_routes_until_published=True)`), while its peers already carry them
  as allowed IPs: a node that learnt the key first can reach us encrypted, and we still reach it
  directly. Workload CIDRs are not held. Once our key is in etcd, both sides encrypt::

      node A (fresh device, key A2)                  node B (runs etcd; A's key cleared)
   1  peers: B (block, host address); routes:         A is no peer: routes to A directly
      B's block → device, B's host address → throw
   2  publish A2 ─────── plain ──────────────────▶  etcd stores A2 ──▶ B programs A (A2)
   3  watch: our key is A2 ◀─ plain, or encrypted ── (B's replies, now encrypted: A has B as a
      (A accepts B's handshake: B is its peer)        peer, so it decrypts them)
   4  B's host address → device (A2 is published) ═ WireGuard ═▶ both directions encrypted

* **while running**, `DatastoreWatchdog`: when no etcd endpoint has answered for 30 s
  (`MESHCRYPT_WIREGUARD_BOOTSTRAP_TIMEOUT`, 0 disables), `Bootstrapper.last_resort` removes our
  WireGuard configuration of every enabled family (§4.3, Felix's "giving up after timeout"), and the
  agent retries with every configured endpoint (`SwitchableDatastore.replace`), holding WireGuard
  programming until etcd answers; then it starts again as from the bootstrap (fresh device, held
  host routes, new key).

Every removal step is retried (5 attempts, back-off 0.2 s doubling to 2 s with 20 % jitter) and
tolerates etcd being down: a key that cannot be cleared is reported, and the manager's next
publication overwrites it anyway.

Limits. Felix can always clear a key because the Kubernetes API server sits outside the encrypted
mesh; here etcd is both the key store and (possibly) behind WireGuard. Clearing the key needs at
least one etcd endpoint that answers in plaintext: one not on a meshcrypt node, a loopback (local)
member, or a member on a node that has not programmed our old key. If every member sits on a node
that still encrypts to our old key, nothing this node can do reaches it: keep one etcd endpoint
outside host encryption.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from meshcrypt.agent.cluster import ClusterView
from meshcrypt.calc.calculator import Calculator
from meshcrypt.datastore import codecs, layout
from meshcrypt.datastore.node_status import KeyPublisher
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.config_parse import resolve
from meshcrypt.model.errors import ConfigError, MeshcryptError, NotFound, PermanentError
from meshcrypt.model.net import IPFamily
from meshcrypt.model.resources import NodeResource
from meshcrypt.ports import (
    Datastore,
    KeyValue,
    Netlink,
    NetlinkFactory,
    WatchEvent,
    WireguardDevices,
    WireguardFactory,
)
from meshcrypt.wireguard.bootstrap import (
    ABSENT,
    FAMILIES,
    BootstrapDecision,
    BootstrapFacts,
    FamilyFacts,
    KernelWireguardState,
    decide,
    needs_kernel_state,
    watchdog_families,
)

log = logging.getLogger(__name__)

TIMEOUT_ENV = "MESHCRYPT_WIREGUARD_BOOTSTRAP_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
FORCE_ENV = "FELIX_DBG_WGBOOTSTRAP"  # Felix's test backdoor: bootstrap even without host encryption

REMOVE_ATTEMPTS = 5
READ_ATTEMPTS = 3
BACKOFF_START = 0.2
BACKOFF_MAX = 2.0
BACKOFF_JITTER = 0.2

Sleep = Callable[[float], Awaitable[None]]


def bootstrap_timeout_from_env(environ: Mapping[str, str]) -> tuple[float, ConfigError | None]:
    """`MESHCRYPT_WIREGUARD_BOOTSTRAP_TIMEOUT` in seconds (default 30; 0 turns the watchdog off).

    An invalid value is reported and the default used, so it never stops the agent.
    """
    raw = environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT, None
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_TIMEOUT, ConfigError(TIMEOUT_ENV, raw, "expected a number of seconds")
    if not value >= 0 or value == float("inf"):
        return DEFAULT_TIMEOUT, ConfigError(TIMEOUT_ENV, raw, "expected 0 or a positive number")
    return value, None


def bootstrap_forced(environ: Mapping[str, str]) -> bool:
    """Whether `FELIX_DBG_WGBOOTSTRAP` is set (its presence counts, as in Felix)."""
    return FORCE_ENV in environ


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): 0.2, 0.4, 0.8, 1.6, 2, … (+≤20 %)."""
    base = min(BACKOFF_START * 2.0 ** (attempt - 1), BACKOFF_MAX)
    return base * (1 + random.uniform(0, BACKOFF_JITTER))


def family_facts(
    config: FelixConfig, family: IPFamily, kernel: KernelWireguardState = ABSENT
) -> FamilyFacts:
    """The decision's view of one family's configuration."""
    family_config = config.for_family(family)
    return FamilyFacts(family, family_config.enabled, family_config.interface_name, kernel)


# ---- the configuration ---------------------------------------------------------------------------


async def read_bootstrap_config(
    datastore: Datastore,
    node: str,
    env_layer: Mapping[str, object],
    *,
    attempts: int = READ_ATTEMPTS,
    sleep: Sleep = asyncio.sleep,
) -> FelixConfig:
    """The configuration at start: FelixConfiguration `default` and `node.<node>` under the
    `FELIX_*` layer, read (one listing, up to `attempts` tries) before the agent syncs. When etcd
    does not answer the environment alone decides (logged); invalid fields are reported and
    skipped, as the agent does.

    A failed try is retried because the answer decides whether the bootstrap runs at all: a
    single slow reply (a lost WireGuard handshake costs 5 s) must not turn host encryption "off".
    """
    view = ClusterView(node, env_layer, Calculator(node))
    kvs = await list_with_retries(
        datastore, layout.FELIX_CONFIGURATIONS, "FelixConfigurations", attempts, sleep
    )
    if kvs is None:
        log.warning(
            "Cannot read the FelixConfigurations; the WireGuard bootstrap uses the environment only"
        )
        return resolve(env_layer)
    for kv in kvs:
        view.upsert(kv)
    try:
        return view.felix_config()
    except (ConfigError, ValueError) as exc:
        log.error("The configuration layers do not combine (%s); using the environment only", exc)
        return resolve(env_layer)


# ---- reading the facts ---------------------------------------------------------------------------


def read_kernel_state(
    wireguard: WireguardFactory, interfaces: Mapping[IPFamily, str]
) -> dict[IPFamily, KernelWireguardState]:
    """The device state of each family's interface. Any failure (no client, no device, a broken
    device) reads as "no device", as in Felix."""
    found: dict[IPFamily, KernelWireguardState] = {f: ABSENT for f in interfaces}
    if not interfaces:
        return found
    try:
        client: WireguardDevices = wireguard()
    except MeshcryptError as exc:
        log.info("No WireGuard client (%s): treating every device as absent", exc)
        return found
    try:
        for family, name in interfaces.items():
            try:
                device = client.device(name)
            except MeshcryptError as exc:
                log.info("%s WireGuard device %s not readable (%s)", family.label, name, exc)
                continue
            key = device.public_key
            found[family] = KernelWireguardState(
                exists=True,
                public_key=None if key is None or key.is_zero else key,
                peer_keys=frozenset(k for k in device.peers if not k.is_zero),
            )
    finally:
        client.close()
    return found


async def read_nodes(
    datastore: Datastore, *, attempts: int = READ_ATTEMPTS, sleep: Sleep = asyncio.sleep
) -> dict[str, NodeResource] | None:
    """Every valid Node in etcd by name, or None when etcd did not answer `attempts` times.

    An invalid Node is skipped with one log line naming the key, like everywhere else.
    """
    kvs = await list_with_retries(datastore, layout.NODES, "Nodes", attempts, sleep)
    if kvs is None:
        return None
    nodes: dict[str, NodeResource] = {}
    for kv in kvs:
        try:
            node = codecs.decode_node(kv.key, kv.value)
        except codecs.ResourceError as exc:
            log.warning("Skipping %s", exc)
            continue
        nodes[node.name] = node
    return nodes


async def list_with_retries(
    datastore: Datastore, prefix: str, what: str, attempts: int, sleep: Sleep
) -> Sequence[KeyValue] | None:
    """The keys under `prefix`, or None when etcd did not answer `attempts` times (each failed try
    logged, with back-off between tries)."""
    for attempt in range(1, attempts + 1):
        try:
            kvs, _revision = await datastore.list_prefix(prefix)
            return kvs
        except MeshcryptError as exc:
            log.warning(
                "Reading the %s for the WireGuard bootstrap failed (%s), attempt %d of %d",
                what,
                exc,
                attempt,
                attempts,
            )
            if attempt < attempts:
                await sleep(backoff(attempt))
    return None


# ---- removing our WireGuard configuration --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemovalResult:
    """What removing one family's WireGuard configuration achieved."""

    family: IPFamily
    interface_name: str
    device_deleted: bool  # the device is gone (or never existed); False also when not attempted
    key_cleared: bool  # the published key is empty now (or there is no Node)
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


async def delete_device(
    netlink: NetlinkFactory,
    name: str,
    *,
    attempts: int = REMOVE_ATTEMPTS,
    sleep: Sleep = asyncio.sleep,
) -> str | None:
    """Delete link `name` (absent is fine). None on success, else the last error after `attempts`.

    One netlink client is made (on first need, again after a failure to make it) and closed at the end.
    """
    client: Netlink | None = None
    error = "not attempted"
    try:
        for attempt in range(1, attempts + 1):
            try:
                if client is None:
                    client = netlink()
                link = client.link_by_name(name)
                if link is not None:
                    client.link_delete(link.index)
                    log.info("Deleted WireGuard device %s", name)
                return None
            except MeshcryptError as exc:
                if isinstance(exc, NotFound):  # deleted by someone else first: what we wanted
                    return None
                error = f"deleting device {name}: {exc}"
                log.warning("Bootstrap: %s (attempt %d of %d)", error, attempt, attempts)
            if attempt < attempts:
                await sleep(backoff(attempt))
        return error
    finally:
        if client is not None:
            client.close()


async def clear_published_key(
    datastore: Datastore,
    node: str,
    family: IPFamily,
    *,
    attempts: int = REMOVE_ATTEMPTS,
    sleep: Sleep = asyncio.sleep,
) -> str | None:
    """Set the Node's published key of `family` to "" with compare-and-swap (other fields kept).

    None on success (also when the key was already empty or there is no Node), else the last
    error after `attempts`; a permanent error (an unreadable Node) is not retried.
    """
    publisher = KeyPublisher(datastore, node)
    error = "not attempted"
    for attempt in range(1, attempts + 1):
        try:
            if await publisher.publish(family, None):
                log.info("Cleared %s WireGuard public key from datastore", family.label)
            else:
                log.info("%s WireGuard public key not set in datastore", family.label)
            return None
        except PermanentError as exc:
            return f"clearing the {family.label} public key: {exc}"
        except MeshcryptError as exc:
            error = f"clearing the {family.label} public key: {exc}"
            log.warning("Bootstrap: %s (attempt %d of %d)", error, attempt, attempts)
        if attempt < attempts:
            await sleep(backoff(attempt))
    return error


async def remove_wireguard(
    family: IPFamily,
    interface_name: str,
    *,
    node: str,
    netlink: NetlinkFactory,
    datastore: Datastore | None,
    attempts: int = REMOVE_ATTEMPTS,
    sleep: Sleep = asyncio.sleep,
) -> RemovalResult:
    """Felix's `removeWireguardForBootstrapping`: delete the device (skipped without a name), then
    clear the published key (skipped without a datastore); both are attempted whatever the other's
    outcome."""
    errors: list[str] = []
    deleted = False
    if interface_name:
        device_error = await delete_device(netlink, interface_name, attempts=attempts, sleep=sleep)
        deleted = device_error is None
        if device_error is not None:
            errors.append(device_error)
    cleared = False
    if datastore is None:
        errors.append(f"clearing the {family.label} public key: no datastore")
    else:
        key_error = await clear_published_key(
            datastore, node, family, attempts=attempts, sleep=sleep
        )
        cleared = key_error is None
        if key_error is not None:
            errors.append(key_error)
    return RemovalResult(family, interface_name, deleted, cleared, tuple(errors))


# ---- the bootstrap -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BootstrapOutcome:
    """The decision and what carrying it out achieved."""

    decision: BootstrapDecision
    removals: tuple[RemovalResult, ...] = ()

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The etcd endpoints the agent should use from now on."""
        return self.decision.endpoints

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.removals)


@dataclass(frozen=True, slots=True)
class LastResortOutcome:
    """What the watchdog's removal achieved; `endpoints` is every configured endpoint again."""

    removals: tuple[RemovalResult, ...]
    endpoints: tuple[str, ...] = field(default=())


class Bootstrapper:
    """Runs the bootstrap (§4.2) and the last-resort removal (§4.3) for one node.

    `netlink` and `wireguard` are the backend's factories (so a wireguard-go device is stopped
    through its supervisor); calls to them are short and synchronous, made before the agent's
    dataplane thread starts or while it is held (see `DatastoreWatchdog.holding`).
    """

    def __init__(
        self,
        *,
        node: str,
        config: FelixConfig,
        endpoints: Sequence[str],
        netlink: NetlinkFactory,
        wireguard: WireguardFactory,
        force: bool = False,
        attempts: int = REMOVE_ATTEMPTS,
        read_attempts: int = READ_ATTEMPTS,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.node = node
        self.config = config
        self.endpoints = tuple(endpoints)
        self._netlink = netlink
        self._wireguard = wireguard
        self._force = force
        self._attempts = attempts
        self._read_attempts = read_attempts
        self._sleep = sleep

    def _families(self) -> tuple[FamilyFacts, ...]:
        return tuple(family_facts(self.config, f) for f in FAMILIES)

    async def facts(self, datastore: Datastore) -> BootstrapFacts:
        """Read what the decision needs: the kernel only for families past step b, the datastore
        only when some family has a device worth comparing."""
        host_encryption = self.config.wireguard_host_encryption_enabled
        families = self._families()
        wanted = {
            f.family: f.interface_name
            for f in families
            if needs_kernel_state(f, host_encryption=host_encryption, force=self._force)
        }
        kernel = read_kernel_state(self._wireguard, wanted)
        families = tuple(
            family_facts(self.config, f.family, kernel.get(f.family, ABSENT)) for f in families
        )
        # The Nodes matter only to a family with a device worth comparing (steps e-g); for the
        # others the decision never looks at them, so an empty map stands for "not read".
        nodes: dict[str, NodeResource] | None = {}
        if any(f.kernel.has_key and f.kernel.peer_keys for f in families if f.family in wanted):
            nodes = await read_nodes(datastore, attempts=self._read_attempts, sleep=self._sleep)
        return BootstrapFacts(
            node_name=self.node,
            host_encryption=host_encryption,
            families=families,
            endpoints=self.endpoints,
            nodes=nodes,
            force=self._force,
        )

    async def run(self, datastore: Datastore) -> BootstrapOutcome:
        """Decide and carry out the decision; never raises for kernel or datastore failures (they
        are in the outcome and logged). `datastore` should reach every configured endpoint."""
        decision = decide(await self.facts(datastore))
        for family in decision.families:
            log.info("%s WireGuard bootstrap: %s", family.family.label, family.reason.value)
            for note in family.notes:
                level = logging.INFO if note.verdict.keeps else logging.WARNING
                log.log(
                    level,
                    "%s etcd endpoint %s (node %s): %s",
                    family.family.label,
                    note.endpoint,
                    note.node or "-",
                    note.verdict.value,
                )
        removals = []
        for family in decision.removals:
            removals.append(await self._remove(family.family, family.interface_name, datastore))
        if decision.dropped:
            log.warning(
                "Using etcd endpoints %s (dropped %s)", decision.endpoints, decision.dropped
            )
        return BootstrapOutcome(decision, tuple(removals))

    async def last_resort(self, datastore: Datastore | None) -> LastResortOutcome:
        """Felix's `RemoveWireguardConditionallyOnBootstrap`: with host encryption on, remove the
        WireGuard configuration of every enabled family. The key clearing will usually fail (etcd
        is what we cannot reach); it is attempted anyway."""
        targets = watchdog_families(
            self._families(), host_encryption=self.config.wireguard_host_encryption_enabled
        )
        removals = []
        for family in targets:
            log.warning(
                "%s: no etcd endpoint answered; removing WireGuard configuration (last resort)",
                family.family.label,
            )
            removals.append(await self._remove(family.family, family.interface_name, datastore))
        return LastResortOutcome(tuple(removals), self.endpoints)

    async def _remove(
        self, family: IPFamily, name: str, datastore: Datastore | None
    ) -> RemovalResult:
        result = await remove_wireguard(
            family,
            name,
            node=self.node,
            netlink=self._netlink,
            datastore=datastore,
            attempts=self._attempts,
            sleep=self._sleep,
        )
        for error in result.errors:
            log.warning("%s WireGuard removal incomplete: %s", family.label, error)
        return result


def bootstrap_applies(config: FelixConfig, *, force: bool = False) -> bool:
    """Whether a family can end up filtering endpoints or be removed for host-encryption reasons."""
    return (config.wireguard_host_encryption_enabled or force) and (
        config.wireguard_enabled or config.wireguard_enabled_v6
    )


# ---- the watchdog ----------------------------------------------------------------------------------


class DatastoreWatchdog:
    """Fires once when etcd has been unreachable for `timeout` seconds (0: never).

    The agent reports the datastore's state: `reachable()` whenever a call or watch succeeds (or the
    syncer is in sync), `unreachable()` when one fails. It starts out unreachable: the clock runs
    from construction, as Felix's 30 s run from the start of its Typha connection attempts.

    After firing, `holding` stays True until `reachable()`: while it does, the agent must not apply
    WireGuard (the manager would recreate the device, with a key nobody knows, and put our etcd
    traffic back into the asymmetric tunnel). `run()` calls `on_expired` each time it fires.
    """

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout < 0:
            raise ValueError("timeout must not be negative")
        self.timeout = timeout
        self._clock = clock
        self._down_since: float | None = clock()
        self._fired = False
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.timeout > 0

    @property
    def holding(self) -> bool:
        """Fired and not reachable since: keep WireGuard unprogrammed."""
        return self._fired

    def reachable(self) -> None:
        if self._down_since is None and not self._fired:
            return
        log.debug("etcd reachable again")
        self._down_since = None
        self._fired = False
        self._wake.set()

    def unreachable(self) -> None:
        if self._down_since is None:
            self._down_since = self._clock()
            self._wake.set()

    def remaining(self) -> float | None:
        """Seconds until the watchdog fires; None when it is not counting down."""
        if not self.enabled or self._down_since is None or self._fired:
            return None
        return max(0.0, self._down_since + self.timeout - self._clock())

    def poll(self) -> bool:
        """True exactly once per outage, when the timeout has passed."""
        remaining = self.remaining()
        if remaining is None or remaining > 0:
            return False
        self._fired = True
        return True

    async def run(self, on_expired: Callable[[], Awaitable[object]]) -> None:
        """Wait for expiries and call `on_expired` for each; runs until cancelled."""
        while True:
            self._wake.clear()
            if self.poll():
                await on_expired()
                continue
            remaining = self.remaining()
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                pass


# ---- the rebuildable datastore client ------------------------------------------------------------


class SwitchableDatastore:
    """A `Datastore` whose client can be replaced while the agent runs.

    The bootstrap may drop etcd endpoints and the watchdog's last resort goes back to all of them;
    everything in the agent (syncer, key publisher, status writes) keeps this one object. `replace`
    closes the old client, so its calls and watches in flight end with `DatastoreUnavailable` and
    the syncer lists again, through the new client, reconciling whatever changed meanwhile.
    """

    def __init__(self, inner: Datastore) -> None:
        self._inner = inner

    @property
    def inner(self) -> Datastore:
        return self._inner

    async def replace(self, new: Datastore) -> None:
        old, self._inner = self._inner, new
        await old.close()

    async def get(self, key: str) -> KeyValue | None:
        return await self._inner.get(key)

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self._inner.list_prefix(prefix)

    def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        return self._inner.watch_prefix(prefix, start_revision)

    async def txn(
        self,
        expect: Mapping[str, int],
        puts: Mapping[str, bytes],
        deletes: Sequence[str] = (),
    ) -> bool:
        return await self._inner.txn(expect, puts, deletes)

    async def close(self) -> None:
        await self._inner.close()
