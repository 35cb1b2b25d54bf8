"""meshcrypt.agent.bootstrap over the fakes: every scenario of reference §5.10 (# 66-80), for IPv4
only, IPv6 only and dual stack, plus the watchdog.

Adapted to etcd: the Typha endpoints become etcd endpoints — e1 on the local node1, e2 on node2,
e3 on node3 (no keys), e4 on a host that is no node (Felix's "Typha without node name"). Felix's
call counts (Gets per Typha, handles) do not carry over, since the Nodes are read in one listing;
the tests check what matters instead: the endpoints returned, the kernel operations, the Node
writes, and which clients were made.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from meshcrypt.agent.bootstrap import (
    DEFAULT_TIMEOUT,
    READ_ATTEMPTS,
    TIMEOUT_ENV,
    BootstrapOutcome,
    Bootstrapper,
    DatastoreWatchdog,
    backoff,
    bootstrap_applies,
    bootstrap_forced,
    bootstrap_timeout_from_env,
)
from meshcrypt.datastore import layout
from meshcrypt.fakes import DatastoreOp, FakeClock, FakeDatastore, FakeKernel, Op
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.dataplane import Peer
from meshcrypt.model.errors import DatastoreUnavailable
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import IPFamily
from meshcrypt.wireguard.bootstrap import Action, Reason

V4, V6 = IPFamily.V4, IPFamily.V6
IFACE = {V4: "wireguard.cali", V6: "wg-v6.cali"}
STATUS = {V4: "wireguardPublicKey", V6: "wireguardPublicKeyV6"}
STACKS = {"v4": (V4,), "v6": (V6,), "dual": (V4, V6)}

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def endpoint(family: IPFamily, host: int) -> str:
    return f"http://10.0.0.{host}:2379" if family is V4 else f"http://[fd00::{host}]:2379"


def e(families: tuple[IPFamily, ...], *hosts: int) -> tuple[str, ...]:
    """The endpoints on `hosts` (1 = node1 ... 4 = no node), for each family, v4 first."""
    return tuple(endpoint(f, h) for f in families for h in hosts)


@dataclass
class World:
    """One node's kernel and the cluster's etcd, with node1 (us), node2 and node3."""

    families: tuple[IPFamily, ...]
    host_encryption: bool = True
    kernel: FakeKernel = field(default_factory=FakeKernel)
    ds: FakeDatastore = field(default_factory=FakeDatastore)
    sleeps: list[float] = field(default_factory=list)
    private: dict[IPFamily, PrivateKey] = field(default_factory=dict)
    node2: dict[IPFamily, Key] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for family in IPFamily:
            self.private[family] = PrivateKey.generate()
            self.node2[family] = PrivateKey.generate().public_key()

    def ours(self, family: IPFamily) -> Key:
        return self.private[family].public_key()

    # -- setup --------------------------------------------------------------------------------

    def put_node(self, name: str, host: int, keys: dict[IPFamily, Key]) -> None:
        doc = {
            "kind": "Node",
            "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name, "labels": {"keep": "me"}},
            "spec": {
                "bgp": {"ipv4Address": f"10.0.0.{host}/24", "ipv6Address": f"fd00::{host}/64"}
            },
            "status": {STATUS[f]: k.to_base64() for f, k in keys.items()},
        }
        self.ds.server_put(layout.node_key(name), json.dumps(doc).encode())

    def cluster(self, *, published: dict[IPFamily, Key] | None = None) -> None:
        """node1 publishes our keys (or `published`), node2 its keys, node3 none."""
        mine = published if published is not None else {f: self.ours(f) for f in self.families}
        self.put_node("node1", 1, mine)
        self.put_node("node2", 2, {f: self.node2[f] for f in self.families})
        self.put_node("node3", 3, {})

    def device(self, family: IPFamily, peers: list[Key] | None = None) -> None:
        """Our device of `family`, with our key and (by default) node2's key as its one peer."""
        name = IFACE[family]
        self.kernel.add_link(name, kind="wireguard", mtu=1420, up=True)
        keys = [self.node2[family]] if peers is None else peers
        self.kernel.tamper_device(
            name, private_key=self.private[family], peers=[Peer(k) for k in keys]
        )

    def config(self, **overrides: object) -> FelixConfig:
        values: dict[str, object] = {
            "wireguard_enabled": V4 in self.families,
            "wireguard_enabled_v6": V6 in self.families,
            "wireguard_host_encryption_enabled": self.host_encryption,
        }
        values.update(overrides)
        return FelixConfig(**values)  # type: ignore[arg-type]

    # -- running ------------------------------------------------------------------------------

    def bootstrapper(self, endpoints: tuple[str, ...], **overrides: object) -> Bootstrapper:
        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        return Bootstrapper(
            node="node1",
            config=self.config(**overrides),
            endpoints=endpoints,
            netlink=self.kernel.netlink_factory(),
            wireguard=self.kernel.wireguard_factory(),
            sleep=sleep,
        )

    def bootstrap(self, endpoints: tuple[str, ...], **overrides: object) -> BootstrapOutcome:
        return run(self.bootstrapper(endpoints, **overrides).run(self.ds))

    # -- reading ------------------------------------------------------------------------------

    def published(self, name: str = "node1") -> dict[str, str]:
        raw = self.ds.snapshot()[layout.node_key(name)]
        status: dict[str, str] = json.loads(raw).get("status", {})
        return status

    def has_device(self, family: IPFamily) -> bool:
        return self.kernel.has_link(IFACE[family])


def ready(families: tuple[IPFamily, ...], *, host_encryption: bool = True) -> World:
    """A World whose Nodes publish our keys, with our devices holding node2's key as a peer."""
    w = World(families, host_encryption=host_encryption)
    w.cluster()
    for family in families:
        w.device(family)
    return w


@pytest.fixture(params=list(STACKS), ids=list(STACKS))
def stack(request: pytest.FixtureRequest) -> tuple[IPFamily, ...]:
    families: tuple[IPFamily, ...] = STACKS[request.param]
    return families


def other(families: tuple[IPFamily, ...]) -> tuple[IPFamily, ...]:
    return tuple(f for f in IPFamily if f not in families)


# ---- host encryption off -----------------------------------------------------------------------


def test_66_host_encryption_off_keeps_everything_but_cleans_the_disabled_family(stack):
    w = ready(stack, host_encryption=False)
    outcome = w.bootstrap(())
    assert outcome.endpoints == ()
    assert outcome.ok
    assert w.kernel.counters.wireguard_clients == 0  # the kernel is not read
    assert w.ds.calls[DatastoreOp.TXN] == 0  # no Node updates
    for family in stack:
        assert outcome.decision.family(family).reason is Reason.HOST_ENCRYPTION_OFF
        assert w.has_device(family)
    disabled = other(stack)
    # Dual stack: nothing to clean, no client at all; single stack: the other family is cleaned.
    assert w.kernel.counters.netlink_clients == len(disabled)
    assert w.ds.calls[DatastoreOp.GET] == len(disabled)
    assert [r.family for r in outcome.removals] == list(disabled)


def test_67_last_resort_does_nothing_without_host_encryption(stack):
    w = ready(stack, host_encryption=False)
    result = run(w.bootstrapper(e(stack, 1, 2)).last_resort(w.ds))
    assert result.removals == ()
    assert sum(w.ds.calls.values()) == 0
    assert w.kernel.counters.netlink_clients == w.kernel.counters.wireguard_clients == 0


# ---- host encryption on: filtering --------------------------------------------------------------


def test_68_every_endpoint_is_kept_when_routing_is_symmetric(stack):
    w = ready(stack)
    endpoints = e(stack, 1, 2, 3, 4)
    outcome = w.bootstrap(endpoints)
    assert outcome.endpoints == endpoints
    assert [r.family for r in outcome.removals] == list(other(stack))  # only the disabled one
    assert w.ds.calls[DatastoreOp.TXN] == 0
    assert w.kernel.counters.wireguard_clients == 1  # one client reads both devices
    for family in stack:
        assert outcome.decision.family(family).reason is Reason.KEY_MATCHES
        assert w.has_device(family)
    assert w.published() == {STATUS[f]: w.ours(f).to_base64() for f in stack}


def test_69_an_endpoint_on_a_node_whose_key_we_lack_is_dropped(stack):
    w = World(stack)
    w.cluster()
    for family in stack:
        w.device(family, peers=[PrivateKey.generate().public_key()])  # not node2's key
    outcome = w.bootstrap(e(stack, 1, 2, 3, 4))
    assert outcome.endpoints == e(stack, 1, 3, 4)
    assert outcome.decision.dropped == e(stack, 2)
    assert w.ds.calls[DatastoreOp.TXN] == 0
    assert all(w.has_device(f) for f in stack)


def test_70_when_every_endpoint_would_be_dropped_wireguard_is_removed(stack):
    w = World(stack)
    w.cluster()
    for family in stack:
        w.device(family, peers=[PrivateKey.generate().public_key()])
    outcome = w.bootstrap(e(stack, 2))
    assert outcome.endpoints == e(stack, 2)  # the full list
    for family in stack:
        decision = outcome.decision.family(family)
        assert (decision.action, decision.reason) == (Action.REMOVE, Reason.NO_USABLE_ENDPOINT)
        assert not w.has_device(family)
    assert w.published() == {STATUS[f]: "" for f in stack}
    assert w.published("node2") == {STATUS[f]: w.node2[f].to_base64() for f in stack}
    assert outcome.ok


def test_71_a_key_mismatch_removes_wireguard_and_keeps_the_endpoints(stack):
    w = World(stack)
    w.cluster(published={f: PrivateKey.generate().public_key() for f in stack})
    for family in stack:
        w.device(family)
    outcome = w.bootstrap(e(stack, 2, 3))
    assert outcome.endpoints == e(stack, 2, 3)
    for family in stack:
        assert outcome.decision.family(family).reason is Reason.KEY_MISMATCH
        assert not w.has_device(family)
    assert w.published() == {STATUS[f]: "" for f in stack}
    assert w.kernel.open_netlink_clients == w.kernel.open_wireguard_clients == 0


# ---- the last resort (§4.3) ----------------------------------------------------------------------


def test_72_last_resort_deletes_devices_and_clears_keys(stack):
    w = ready(stack)
    result = run(w.bootstrapper(e(stack, 1, 2)).last_resort(w.ds))
    assert [r.family for r in result.removals] == list(stack)
    assert all(r.ok and r.device_deleted and r.key_cleared for r in result.removals)
    assert not any(w.has_device(f) for f in stack)
    assert w.published() == {STATUS[f]: "" for f in stack}
    assert w.kernel.counters.wireguard_clients == 0
    assert w.kernel.open_netlink_clients == 0
    assert result.endpoints == e(stack, 1, 2)


def test_73_last_resort_with_the_device_already_gone_still_clears_the_keys(stack):
    w = World(stack)
    w.cluster()
    result = run(w.bootstrapper(()).last_resort(w.ds))
    assert all(r.ok for r in result.removals)
    assert w.published() == {STATUS[f]: "" for f in stack}
    assert w.kernel.counters.link_delete == 0


def test_74_transient_failures_are_retried(stack):
    w = ready(stack)
    w.ds.fail_next(DatastoreOp.GET)
    w.ds.fail_next(DatastoreOp.GET)
    for _ in stack:
        w.ds.fail_next(DatastoreOp.TXN, DatastoreUnavailable("lost"))
    w.kernel.faults.fail_next(Op.LINK_BY_NAME)
    w.kernel.faults.fail_next(Op.LINK_DELETE)
    result = run(w.bootstrapper(()).last_resort(w.ds))
    assert all(r.ok for r in result.removals)
    assert not any(w.has_device(f) for f in stack)
    assert w.published() == {STATUS[f]: "" for f in stack}
    assert w.sleeps  # backed off between attempts
    assert all(0.2 <= s <= 2.4 for s in w.sleeps)


def test_75_persistent_kernel_failures_are_reported_and_keys_still_cleared(stack):
    w = ready(stack)
    w.kernel.faults.fail_next(Op.LINK_DELETE, persistent=True)
    result = run(w.bootstrapper(()).last_resort(w.ds))
    for removal in result.removals:
        assert not removal.ok
        assert not removal.device_deleted
        assert removal.key_cleared
        assert "deleting device" in removal.errors[0]
    assert all(w.has_device(f) for f in stack)
    assert w.published() == {STATUS[f]: "" for f in stack}
    assert w.kernel.faults.fired(Op.LINK_DELETE) == 5 * len(stack)


def test_76_an_unreachable_datastore_is_tolerated_and_reported(stack):
    w = ready(stack)
    w.ds.go_down()
    result = run(w.bootstrapper(()).last_resort(w.ds))
    for removal in result.removals:
        assert removal.device_deleted
        assert not removal.key_cleared
        assert "clearing the" in removal.errors[0]
    assert not any(w.has_device(f) for f in stack)
    assert w.ds.calls[DatastoreOp.GET] == 5 * len(stack)
    assert w.ds.calls[DatastoreOp.TXN] == 0
    w.ds.come_up()
    assert w.published() == {STATUS[f]: w.ours(f).to_base64() for f in stack}  # not cleared


# ---- removal without filtering -------------------------------------------------------------------


def test_77_disabled_families_are_removed_and_endpoints_kept(stack):
    w = ready(stack, host_encryption=False)
    endpoints = e(stack, 2, 3)
    outcome = w.bootstrap(endpoints, wireguard_enabled=False, wireguard_enabled_v6=False)
    assert outcome.endpoints == endpoints
    assert [r.family for r in outcome.removals] == [V4, V6]
    assert not any(w.has_device(f) for f in IPFamily)
    assert w.published() == {STATUS[f]: "" for f in stack}
    assert w.ds.calls[DatastoreOp.TXN] == len(stack)  # only the non-empty keys are written
    assert w.kernel.counters.wireguard_clients == 0


def test_78_empty_interface_names_skip_the_device_but_clear_the_keys(stack):
    w = World(stack)
    w.cluster()
    endpoints = e(stack, 2, 3)
    outcome = w.bootstrap(endpoints, wireguard_interface_name="", wireguard_interface_name_v6="")
    assert outcome.endpoints == endpoints
    assert all(d.reason is Reason.DISABLED for d in outcome.decision.families)
    assert w.kernel.counters.netlink_clients == 0
    assert w.published() == {STATUS[f]: "" for f in stack}


def test_79_host_encryption_without_a_device_removes_and_clears(stack):
    w = World(stack)
    w.cluster()
    endpoints = e(stack, 2, 3)
    outcome = w.bootstrap(endpoints)
    assert outcome.endpoints == endpoints
    for family in stack:
        assert outcome.decision.family(family).reason is Reason.NO_KERNEL_STATE
    assert w.published() == {STATUS[f]: "" for f in stack}
    assert w.ds.calls[DatastoreOp.LIST] == 0  # nothing to compare: the Nodes are not read


def test_80_a_device_without_peers_is_removed(stack):
    w = World(stack)
    w.cluster()
    for family in stack:
        w.device(family, peers=[])
    endpoints = e(stack, 2, 3)
    outcome = w.bootstrap(endpoints)
    assert outcome.endpoints == endpoints
    assert not any(w.has_device(f) for f in stack)
    assert w.published() == {STATUS[f]: "" for f in stack}


# ---- meshcrypt additions ---------------------------------------------------------------------------


def test_an_unreachable_datastore_at_start_keeps_wireguard_for_the_watchdog(stack):
    w = ready(stack)
    w.ds.go_down()
    endpoints = e(stack, 1, 2)
    outcome = w.bootstrap(endpoints)
    assert outcome.endpoints == endpoints
    assert outcome.decision.datastore_unknown
    for family in stack:
        assert outcome.decision.family(family).reason is Reason.PUBLISHED_KEY_UNKNOWN
        assert w.has_device(family)
    assert w.ds.calls[DatastoreOp.LIST] == READ_ATTEMPTS


def test_a_missing_own_node_means_no_published_key(stack):
    w = World(stack)
    w.put_node("node2", 2, {f: w.node2[f] for f in stack})
    for family in stack:
        w.device(family)
    outcome = w.bootstrap(e(stack, 2))
    for family in stack:
        assert outcome.decision.family(family).reason is Reason.KEY_MISMATCH
    assert outcome.ok  # clearing a key of a Node that does not exist is success
    assert layout.node_key("node1") not in w.ds.snapshot()


def test_clearing_keeps_the_other_fields_of_the_node():
    w = World((V4,))
    w.cluster(published={V4: PrivateKey.generate().public_key()})
    w.device(V4)
    w.bootstrap(())
    doc = json.loads(w.ds.snapshot()[layout.node_key("node1")])
    assert doc["metadata"]["labels"] == {"keep": "me"}
    assert doc["spec"]["bgp"]["ipv4Address"] == "10.0.0.1/24"
    assert doc["status"] == {"wireguardPublicKey": ""}


def test_an_invalid_node_is_skipped():
    w = World((V4,))
    w.cluster()
    w.ds.server_put(layout.node_key("broken"), b"{not json")
    w.device(V4)
    outcome = w.bootstrap(e((V4,), 2))
    assert outcome.decision.family(V4).reason is Reason.KEY_MATCHES


# ---- environment and back-off -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value", "error"),
    [
        (None, DEFAULT_TIMEOUT, False),
        ("45", 45.0, False),
        ("0", 0.0, False),
        ("soon", DEFAULT_TIMEOUT, True),
        ("-1", DEFAULT_TIMEOUT, True),
        ("nan", DEFAULT_TIMEOUT, True),
        ("inf", DEFAULT_TIMEOUT, True),
    ],
)
def test_timeout_from_the_environment(raw, value, error):
    environ = {} if raw is None else {TIMEOUT_ENV: raw}
    found, problem = bootstrap_timeout_from_env(environ)
    assert found == value
    assert (problem is not None) is error


def test_forced_by_felix_debug_variable():
    assert bootstrap_forced({"FELIX_DBG_WGBOOTSTRAP": ""})
    assert not bootstrap_forced({})


def test_bootstrap_applies_with_host_encryption_and_an_enabled_family():
    assert bootstrap_applies(
        FelixConfig(wireguard_enabled_v6=True, wireguard_host_encryption_enabled=True)
    )
    assert not bootstrap_applies(FelixConfig(wireguard_enabled=True))
    assert bootstrap_applies(FelixConfig(wireguard_enabled=True), force=True)
    assert not bootstrap_applies(FelixConfig(wireguard_host_encryption_enabled=True))


def test_backoff_doubles_up_to_two_seconds_with_jitter():
    for attempt, base in ((1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (5, 2.0), (9, 2.0)):
        assert base <= backoff(attempt) <= base * 1.2


# ---- the watchdog ------------------------------------------------------------------------------------


def test_watchdog_fires_once_per_outage():
    clock = FakeClock()
    dog = DatastoreWatchdog(30, clock.monotonic)
    assert dog.remaining() == 30  # counting from the start
    clock.advance(29)
    assert not dog.poll()
    clock.advance(1)
    assert dog.poll()
    assert dog.holding
    assert not dog.poll()
    clock.advance(100)
    assert not dog.poll()  # not again in the same outage
    dog.reachable()
    assert (dog.holding, dog.remaining()) == (False, None)
    clock.advance(100)
    assert not dog.poll()
    dog.unreachable()
    clock.advance(10)
    dog.unreachable()  # a later failure does not restart the count
    assert dog.remaining() == 20
    clock.advance(20)
    assert dog.poll()


def test_watchdog_disabled_with_zero():
    clock = FakeClock()
    dog = DatastoreWatchdog(0, clock.monotonic)
    clock.advance(1000)
    assert not dog.poll()
    assert dog.remaining() is None


def test_watchdog_run_calls_back_and_resumes_after_recovery():
    async def scenario() -> list[str]:
        events: list[str] = []
        dog = DatastoreWatchdog(0.05)

        async def expired() -> None:
            events.append("expired")

        task = asyncio.create_task(dog.run(expired))
        await asyncio.sleep(0.15)
        events.append("reachable")
        dog.reachable()
        await asyncio.sleep(0.1)
        dog.unreachable()
        await asyncio.sleep(0.15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return events

    assert run(scenario()) == ["expired", "reachable", "expired"]


def test_watchdog_with_the_bootstrapper_removes_and_holds():
    w = World((V4,))
    w.cluster()
    w.device(V4)
    w.ds.go_down()
    clock = FakeClock()
    dog = DatastoreWatchdog(30, clock.monotonic)
    clock.advance(31)
    assert dog.poll()
    result = run(w.bootstrapper(e((V4,), 1, 2)).last_resort(w.ds))
    assert not w.has_device(V4)
    assert result.endpoints == e((V4,), 1, 2)
    assert dog.holding
