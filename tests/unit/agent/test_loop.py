"""The Agent end to end on fakes: FakeDatastore for etcd, FakeKernel for the dataplane.

Each test runs `Agent.run()` on its own event loop (`helpers.run`, with a timeout) and stops it at
the end. The dataplane applies in the agent's own thread, so the tests read and change the fake
kernel through that same thread (`Rig.in_dataplane`), never while an apply runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest

from meshcrypt.agent.bootstrap import Bootstrapper, DatastoreWatchdog
from meshcrypt.agent.loop import Agent, HostEncryptionParts, NodeAddresses
from meshcrypt.datastore import layout
from meshcrypt.fakes import FakeDatastore, FakeKernel, Op
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.dataplane import Endpoint, RouteKind, Rule
from meshcrypt.model.errors import NotFound
from meshcrypt.model.keys import Key
from meshcrypt.model.net import IPFamily
from meshcrypt.ports import EventKind, WatchEvent
from meshcrypt.wireguard.manager import SRC_VALID_MARK
from tests.unit.agent.helpers import (
    block_doc,
    block_key,
    dump,
    eventually,
    fake_backend,
    felix_doc,
    new_key,
    node_doc,
    pool_doc,
    run,
)

T = TypeVar("T")

ME = "n1"
MY_ADDRESS = "192.168.0.1/24"
IFACE = "wireguard.cali"
V4 = IPFamily.V4
MARK = 0x100000
OUR_RULE = Rule(V4, 99, 1, MARK, MARK, invert=True)
POOL_CIDR = ipaddress.IPv4Network("10.65.0.0/16")
TUNNEL_HANDLE = layout.ipam_handle_key(layout.wireguard_handle_id(ME, V4))


class Rig:
    """A FakeDatastore with a pool and WireGuard enabled, a FakeKernel, and an Agent on both."""

    def __init__(
        self,
        env: dict[str, object] | None = None,
        host_encryption: HostEncryptionParts | None = None,
    ) -> None:
        self.ds = FakeDatastore()
        self.kernel = FakeKernel(immediate_link_up=True)
        self.put(
            layout.ip_pool_key("default-ipv4-ippool"),
            pool_doc("default-ipv4-ippool", "10.65.0.0/16"),
        )
        self.set_felix(wireguardEnabled=True)
        self.agent = Agent(
            ME,
            self.ds,
            fake_backend(self.kernel),
            self.kernel.sysfs,
            addresses=lambda: NodeAddresses(ipv4=ipaddress.IPv4Interface(MY_ADDRESS)),
            env_layer=env or {},
            host_encryption=host_encryption,
        )

    # -- datastore --------------------------------------------------------------------------------

    def put(self, key: str, doc: object) -> None:
        self.ds.server_put(key, dump(doc))

    def set_felix(self, **spec: object) -> None:
        self.put(layout.felix_configuration_key("default"), felix_doc("default", **spec))

    def add_remote(self, name: str, index: int, key: Key) -> str:
        """Node `name` at 192.168.0.<index> with block 10.65.<index>.0/26 and tunnel .1 in it."""
        block = f"10.65.{index}.0/26"
        self.put(
            layout.node_key(name),
            node_doc(name, f"192.168.0.{index}/24", key=key, tunnel=f"10.65.{index}.1"),
        )
        self.put(block_key(block), block_doc(block, name))
        return block

    def doc(self, key: str) -> Any:
        raw = self.ds.snapshot().get(key)
        return None if raw is None else json.loads(raw)

    def node(self, name: str = ME) -> Any:
        return self.doc(layout.node_key(name))

    def published_key(self, field: str = "wireguardPublicKey") -> str:
        node = self.node()
        return "" if node is None else str(node.get("status", {}).get(field, ""))

    def tunnel(self) -> str:
        node = self.node()
        wireguard = {} if node is None else node["spec"].get("wireguard", {})
        return str(wireguard.get("interfaceIPv4Address", ""))

    def blocks_of(self, name: str) -> list[str]:
        prefix = layout.ipam_blocks_prefix(V4)
        return [
            json.loads(raw)["cidr"]
            for key, raw in self.ds.snapshot().items()
            if key.startswith(prefix) and json.loads(raw).get("affinity") == f"host:{name}"
        ]

    # -- kernel (in the dataplane thread) ---------------------------------------------------------

    async def in_dataplane(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.agent._executor, fn)

    async def device_key(self) -> str:
        def read() -> str:
            try:
                key = self.kernel.device(IFACE).public_key
            except NotFound:
                return ""
            return "" if key is None else key.to_base64()

        return await self.in_dataplane(read)

    async def peers(self) -> dict[Key, tuple[Endpoint | None, set[str]]]:
        def read() -> dict[Key, tuple[Endpoint | None, set[str]]]:
            try:
                peers = self.kernel.device(IFACE).peers
            except NotFound:
                return {}
            return {k: (p.endpoint, {str(c) for c in p.allowed_ips}) for k, p in peers.items()}

        return await self.in_dataplane(read)

    async def routes(self) -> dict[str, RouteKind]:
        return await self.in_dataplane(
            lambda: {str(r.dst): r.kind for r in self.kernel.routes_in(1, V4)}
        )

    async def our_rules(self) -> list[Rule]:
        return await self.in_dataplane(
            lambda: [r for r in self.kernel.rules_of(V4) if r.table == 1]
        )

    async def converged(self) -> bool:
        key = await self.device_key()
        return bool(key) and self.published_key() == key and bool(self.tunnel())

    # -- running ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Agent]:
        task = asyncio.create_task(self.agent.run())
        try:
            yield self.agent
        finally:
            self.agent.stop()
            await asyncio.wait_for(task, 5)

    async def start_converged(self) -> None:
        await eventually("the agent converges", self.converged)


# ---- one node ------------------------------------------------------------------------------------


def test_one_node_converges() -> None:
    rig = Rig()

    async def main() -> None:
        async with rig.running() as agent:
            await rig.start_converged()
            node = rig.node()
            assert node["metadata"]["name"] == ME
            assert node["spec"]["bgp"]["ipv4Address"] == MY_ADDRESS

            (block,) = rig.blocks_of(ME)
            cidr = ipaddress.IPv4Network(block)
            assert cidr.subnet_of(POOL_CIDR) and cidr.prefixlen == 26
            assert layout.block_affinity_key(ME, cidr) in rig.ds.snapshot()

            key = await rig.device_key()
            assert rig.published_key() == key
            assert rig.published_key("wireguardPublicKeyV6") == ""  # IPv6 WireGuard is off

            tunnel = ipaddress.ip_address(rig.tunnel())
            assert tunnel in cidr
            handle = rig.doc(TUNNEL_HANDLE)
            assert handle["block"] == {block: 1}
            await eventually(
                "the tunnel address is on the device",
                lambda: rig.in_dataplane(
                    lambda: [a.address for a in rig.kernel.addresses_of(IFACE)] == [tunnel]
                ),
            )
            assert (await rig.routes()).get(block) is RouteKind.THROW
            assert await rig.our_rules() == [OUR_RULE]
            assert agent.ready and agent.applied_once
            assert agent.config is not None and agent.config.wireguard_enabled
            assert not await rig.in_dataplane(lambda: rig.kernel.has_link("wg-v6.cali"))

    run(main)


def test_a_remote_node_becomes_a_peer_with_its_block() -> None:
    rig = Rig()
    key2 = new_key()

    async def main() -> None:
        async with rig.running() as agent:
            await rig.start_converged()
            block2 = rig.add_remote("n2", 2, key2)

            async def peered() -> bool:
                peer = (await rig.peers()).get(key2)
                return peer is not None and {block2, "10.65.2.1/32"} <= peer[1]

            await eventually("n2 is a peer", peered)
            endpoint, _ = (await rig.peers())[key2]
            assert endpoint == Endpoint(ipaddress.ip_address("192.168.0.2"), 51820)
            assert (await rig.routes())[block2] is RouteKind.DEVICE
            await eventually(
                "the metrics count one peer",
                lambda: _peers_metric(agent) == 1.0,
            )

            # n2 deleted (with its key): no longer a peer, its block no longer routed to it.
            rig.ds.server_delete(layout.node_key("n2"))

            async def forgotten() -> bool:
                routes = await rig.routes()
                return key2 not in await rig.peers() and routes.get(block2) is not RouteKind.DEVICE

            await eventually("n2 is forgotten", forgotten)

    run(main)


def _peers_metric(agent: Agent) -> float | None:
    for family in agent.metrics.collect():
        if family.name == "meshcrypt_wireguard_peers_programmed":
            for sample in family.samples:
                if dict(sample.labels).get("family") == "IPv4":
                    return sample.value
    return None


OVERWRITES = {
    "another key": lambda: new_key().to_base64(),
    "empty": lambda: "",
    "not a key": lambda: "garbage",
}


@pytest.mark.parametrize("value", list(OVERWRITES.values()), ids=list(OVERWRITES))
def test_an_overwritten_key_is_restored(value: Callable[[], str]) -> None:
    rig = Rig()

    async def main() -> None:
        async with rig.running():
            await rig.start_converged()
            key = await rig.device_key()
            node = rig.node()
            node["status"]["wireguardPublicKey"] = value()
            rig.put(layout.node_key(ME), node)
            assert rig.published_key() != key
            await eventually("the key is restored", lambda: rig.published_key() == key)
            assert await rig.device_key() == key  # the device kept its key

    run(main)


def test_a_deleted_node_is_registered_again_with_its_key() -> None:
    rig = Rig()

    async def main() -> None:
        async with rig.running():
            await rig.start_converged()
            key, tunnel = await rig.device_key(), rig.tunnel()
            rig.ds.server_delete(layout.node_key(ME))
            await eventually("registered again", rig.converged)
            assert rig.node()["spec"]["bgp"]["ipv4Address"] == MY_ADDRESS
            assert rig.published_key() == key
            assert rig.tunnel() == tunnel

    run(main)


# ---- datastore outage ----------------------------------------------------------------------------


def test_datastore_down_the_dataplane_keeps_working_then_catches_up() -> None:
    rig = Rig()
    key2, key3 = new_key(), new_key()
    block2 = rig.add_remote("n2", 2, key2)

    async def main() -> None:
        async with rig.running() as agent:
            await rig.start_converged()
            await eventually("n2 is a peer", lambda: _has_peer(rig, key2))
            old_key, tunnel = await rig.device_key(), rig.tunnel()

            rig.ds.go_down()
            await eventually("the syncer notices", lambda: not agent.syncer.synced.is_set())

            # The device disappears, and the first attempt to create it again fails.
            def break_device() -> int:
                index = rig.kernel.link(IFACE).index
                rig.kernel.delete_link(IFACE)
                rig.kernel.faults.fail_next(Op.LINK_ADD)
                return index

            index = await rig.in_dataplane(break_device)
            agent.on_link_event(IFACE, index, False, False)
            # Meanwhile another cluster member adds n3 (etcd is only down for us).
            block3 = rig.add_remote("n3", 3, key3)

            async def recovered() -> bool:
                routes = await rig.routes()
                key = await rig.device_key()
                return (
                    bool(key)
                    and key != old_key
                    and await _has_peer(rig, key2)
                    and routes.get(block2) is RouteKind.DEVICE
                    and agent.last_apply_ok
                )

            await eventually("the dataplane recovers while etcd is down", recovered)
            assert rig.kernel.faults.fired(Op.LINK_ADD) == 1
            assert await rig.our_rules() == [OUR_RULE]
            assert rig.ds.is_down
            assert rig.published_key() == old_key  # nothing could be written
            assert key3 not in await rig.peers()

            rig.ds.come_up()
            new_key_text = await rig.device_key()
            await eventually(
                "the new key is published and n3 is a peer",
                lambda: _caught_up(rig, new_key_text, key3, block3),
            )
            assert rig.tunnel() == tunnel
            assert agent.ready

    run(main)


async def _has_peer(rig: Rig, key: Key) -> bool:
    return key in await rig.peers()


async def _caught_up(rig: Rig, key: str, peer: Key, block: str) -> bool:
    routes = await rig.routes()
    return (
        rig.published_key() == key
        and await _has_peer(rig, peer)
        and routes.get(block) is RouteKind.DEVICE
    )


# ---- configuration -------------------------------------------------------------------------------


def test_disable_clears_the_key_and_tunnel_address_and_enable_restores() -> None:
    rig = Rig()
    key2 = new_key()
    rig.add_remote("n2", 2, key2)

    async def main() -> None:
        async with rig.running() as agent:
            await rig.start_converged()
            await eventually("n2 is a peer", lambda: _has_peer(rig, key2))
            old_key = await rig.device_key()

            rig.set_felix(wireguardEnabled=False)

            async def torn_down() -> bool:
                return (
                    not await rig.in_dataplane(lambda: rig.kernel.has_link(IFACE))
                    and not await rig.routes()
                    and not await rig.our_rules()
                    and rig.published_key() == ""
                    and rig.tunnel() == ""
                )

            await eventually("WireGuard is torn down", torn_down)
            assert rig.node()["status"]["wireguardPublicKey"] == ""
            assert "wireguard" not in rig.node()["spec"]
            assert TUNNEL_HANDLE not in rig.ds.snapshot()
            assert agent.config is not None and not agent.config.wireguard_enabled
            assert rig.blocks_of(ME)  # the block claim stays

            rig.set_felix(wireguardEnabled=True)
            await eventually("enabled again", rig.converged)
            assert await rig.device_key() != old_key
            await eventually("n2 is a peer again", lambda: _has_peer(rig, key2))

    run(main)


def test_the_environment_overrides_the_datastore() -> None:
    rig = Rig(env={"wireguard_enabled": False})

    async def main() -> None:
        async with rig.running() as agent:
            await eventually(
                "registered and applied",
                lambda: agent.applied_once and rig.node() is not None,
            )
            assert agent.config is not None and not agent.config.wireguard_enabled
            assert not await rig.in_dataplane(lambda: rig.kernel.has_link(IFACE))
            assert rig.published_key() == ""

    run(main)


def test_periodic_resync_repairs_out_of_band_changes() -> None:
    rig = Rig(env={"route_refresh_interval": 0.2})
    key2 = new_key()
    block2 = rig.add_remote("n2", 2, key2)

    async def main() -> None:
        async with rig.running():
            await rig.start_converged()
            await eventually("n2 is a peer", lambda: _has_peer(rig, key2))

            def tamper() -> None:
                (route,) = [r for r in rig.kernel.routes_in(1, V4) if str(r.dst) == block2]
                rig.kernel.remove_route(route.key)
                rig.kernel.remove_rule(OUR_RULE)

            await rig.in_dataplane(tamper)
            assert block2 not in await rig.routes()

            async def repaired() -> bool:
                routes = await rig.routes()
                return routes.get(block2) is RouteKind.DEVICE and await rig.our_rules() == [
                    OUR_RULE
                ]

            await eventually("the resync repairs the route and rule", repaired)

    run(main)


# ---- host encryption: the watchdog -----------------------------------------------------------------


def _watched_rig(host_encryption: bool, removals: list[str]) -> Rig:
    """A Rig whose watchdog expires after 0.3 s without etcd; the last resort is main's: the
    bootstrapper's removal, then (here) nothing to rebuild."""
    holder: list[Rig] = []

    async def no_sleep(_seconds: float) -> None:
        return None

    async def last_resort() -> bool:
        rig = holder[0]
        bootstrapper = Bootstrapper(
            node=ME,
            config=FelixConfig(
                wireguard_enabled=True, wireguard_host_encryption_enabled=host_encryption
            ),
            endpoints=(),
            netlink=rig.kernel.netlink_factory(),
            wireguard=rig.kernel.wireguard_factory(),
            sleep=no_sleep,
        )
        outcome = await bootstrapper.last_resort(rig.ds)
        removals.extend(r.interface_name for r in outcome.removals)
        return bool(outcome.removals)

    env: dict[str, object] = {"wireguard_host_encryption_enabled": host_encryption}
    parts = HostEncryptionParts(watchdog=DatastoreWatchdog(0.3), last_resort=last_resort)
    rig = Rig(env=env, host_encryption=parts)
    holder.append(rig)
    return rig


def test_watchdog_removes_wireguard_and_holds_until_the_datastore_answers() -> None:
    removals: list[str] = []
    rig = _watched_rig(True, removals)
    key2 = new_key()
    rig.add_remote("n2", 2, key2)

    async def main() -> None:
        async with rig.running() as agent:
            await eventually("n2 is a peer", lambda: _has_peer(rig, key2))
            await eventually("our key is published", _published_device_key(rig))
            old_key = await rig.device_key()

            rig.ds.go_down()
            await eventually("the last resort ran", lambda: removals == [IFACE])
            await eventually("holding", lambda: agent.holding)
            assert not await rig.in_dataplane(lambda: rig.kernel.has_link(IFACE))
            assert not agent.ready
            # While holding, nothing recreates the device: not a resync, not a link event.
            agent.on_link_event(IFACE, 99, False, False)
            await asyncio.sleep(0.3)
            assert not await rig.in_dataplane(lambda: rig.kernel.has_link(IFACE))

            rig.ds.come_up()
            await eventually("a new key is published", _published_device_key(rig, not_=old_key))
            await eventually("n2 is a peer again", lambda: _has_peer(rig, key2))
            await eventually("ready", lambda: agent.ready)
            assert not agent.holding

    run(main)


def test_watchdog_without_host_encryption_keeps_wireguard() -> None:
    removals: list[str] = []
    rig = _watched_rig(False, removals)

    async def main() -> None:
        async with rig.running() as agent:
            await rig.start_converged()
            key = await rig.device_key()
            rig.ds.go_down()
            await eventually("the syncer notices", lambda: not agent.syncer.synced.is_set())
            await asyncio.sleep(1.5)  # the watchdog has expired by now
            assert removals == [] and not agent.holding
            assert await rig.device_key() == key
            rig.ds.come_up()
            await eventually("ready again", lambda: agent.ready)

    run(main)


def _published_device_key(rig: Rig, not_: str = "") -> Callable[[], Any]:
    async def check() -> bool:
        key = await rig.device_key()
        return bool(key) and key != not_ and rig.published_key() == key

    return check


def test_host_encryption_uses_the_node_address_and_no_tunnel_address() -> None:
    rig = Rig(env={"wireguard_host_encryption_enabled": True})
    key2 = new_key()
    rig.add_remote("n2", 2, key2)

    async def main() -> None:
        async with rig.running():
            await eventually("our key is published", _published_device_key(rig))

            async def host_routed() -> bool:
                peer = (await rig.peers()).get(key2)
                routes = await rig.routes()
                return (
                    peer is not None
                    and "192.168.0.2/32" in peer[1]
                    and routes.get("192.168.0.2/32") is RouteKind.DEVICE
                )

            await eventually("n2's host address goes through WireGuard", host_routed)
            assert rig.tunnel() == ""
            assert TUNNEL_HANDLE not in rig.ds.snapshot()
            addresses = await rig.in_dataplane(
                lambda: [str(a.address) for a in rig.kernel.addresses_of(IFACE)]
            )
            assert addresses == [MY_ADDRESS.partition("/")[0]]
            assert await rig.in_dataplane(lambda: rig.kernel.sysfs.read(SRC_VALID_MARK)) == "1"

    run(main)


def test_no_restore_warning_for_events_older_than_our_publication(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a key is reported, Node events written before its publication (etcd's watch lags
    behind our own writes) still show the previous key: not someone overwriting ours (that case is
    `test_an_overwritten_key_is_restored`)."""
    rig = Rig()

    async def main() -> None:
        async with rig.running() as agent:
            await rig.start_converged()
            # An event written before the new key's publication: another change of our Node.
            stale = rig.node()
            stale["spec"]["addresses"] = [{"address": "192.168.0.100", "type": "ExternalIP"}]
            revision = rig.ds.revision
            agent._key_reported(V4, new_key().to_base64())  # a new device, a new key
            agent._on_event(WatchEvent(EventKind.PUT, layout.node_key(ME), dump(stale), revision))
            assert "not ours" not in caplog.text

    with caplog.at_level(logging.WARNING):
        run(main)
