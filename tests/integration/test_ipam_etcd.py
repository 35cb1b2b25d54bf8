"""Block claims, tunnel addresses, registration and key publication against a real etcd; IP
autodetection in a throwaway network namespace.

Each agent in the concurrency tests has its own `EtcdDatastore` (its own gRPC connection), as
separate agent processes would. Timings are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from meshcrypt.adapters.autodetect import autodetect
from meshcrypt.adapters.etcd import EtcdDatastore
from meshcrypt.datastore import ipam, layout, registration
from meshcrypt.datastore.node_status import KeyPublisher
from meshcrypt.model.keys import PrivateKey
from meshcrypt.model.net import IPFamily
from meshcrypt.model.resources import IPPoolResource
from meshcrypt.ports import KeyValue
from tests.unit.datastore_ipam.helpers import check_block

from .etcd import EtcdServer, running_etcd

pytestmark = pytest.mark.integration

V4, V6 = IPFamily.V4, IPFamily.V6
POOLS = [
    IPPoolResource(name="v4", cidr=ipaddress.ip_network("10.65.0.0/16"), block_size=26),
    IPPoolResource(name="v6", cidr=ipaddress.ip_network("fd00:65::/112"), block_size=122),
]


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh server per test (it starts in well under a second), so each starts empty."""
    with running_etcd(tmp_path) as server:
        yield server


class CountingDatastore:
    """An `EtcdDatastore` that counts transactions and lost ones."""

    def __init__(self, endpoint: str) -> None:
        self.inner = EtcdDatastore([endpoint])
        self.txns = 0
        self.lost = 0

    async def get(self, key: str) -> KeyValue | None:
        return await self.inner.get(key)

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self.inner.list_prefix(prefix)

    def watch_prefix(self, prefix: str, start_revision: int) -> Any:
        return self.inner.watch_prefix(prefix, start_revision)

    async def txn(
        self, expect: Mapping[str, int], puts: Mapping[str, bytes], deletes: Sequence[str] = ()
    ) -> bool:
        self.txns += 1
        ok = await self.inner.txn(expect, puts, deletes)
        self.lost += not ok
        return ok

    async def close(self) -> None:
        await self.inner.close()


def _read(etcd: EtcdServer, key: str) -> Any:
    """The JSON value at `key`, read through etcd's JSON gateway (None when absent)."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    request = urllib.request.Request(
        f"{etcd.endpoint}/v3/kv/range", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        kvs = json.loads(response.read()).get("kvs", [])
    return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None


@pytest.mark.parametrize("family", [V4, V6])
def test_ten_agents_claiming_at_once_get_distinct_blocks(etcd: EtcdServer, family: IPFamily):

    async def scenario() -> tuple[list[Any], float, int, int]:
        stores = [CountingDatastore(etcd.endpoint) for _ in range(10)]
        try:
            # Connect first, so the race is between claims rather than channel set-ups.
            await asyncio.gather(*(s.get("/calico/warm-up") for s in stores))
            start = time.perf_counter()
            claimed = await asyncio.gather(
                *(ipam.claim_block(s, f"node-{i}", family, POOLS) for i, s in enumerate(stores))
            )
            elapsed = time.perf_counter() - start
            return claimed, elapsed, sum(s.txns for s in stores), sum(s.lost for s in stores)
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    claimed, elapsed, txns, lost = asyncio.run(scenario())
    print(
        f"\n{family.label}: 10 concurrent claims in {elapsed * 1000:.0f} ms, {txns} txns, {lost} lost"
    )

    assert None not in claimed
    assert len(set(claimed)) == 10
    pool = POOLS[0] if family is V4 else POOLS[1]
    lowest = list(pool.cidr.subnets(new_prefix=pool.block_size))[:10]
    assert set(claimed) == set(lowest)
    for i, cidr in enumerate(claimed):
        block = _read(etcd, layout.ipam_block_key(cidr))
        assert block["affinity"] == f"host:node-{i}"
        check_block(block)
        assert _read(etcd, layout.block_affinity_key(f"node-{i}", cidr)) == {
            "state": "confirmed",
            "deleted": False,
        }
    assert lost == txns - 10  # every lost race was retried on another block


def test_ten_agents_register_and_allocate_tunnel_addresses_at_once(etcd: EtcdServer):
    keys = [PrivateKey.generate().public_key().to_base64() for _ in range(10)]

    async def agent(i: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        ds = EtcdDatastore([etcd.endpoint])
        name = f"node-{i}"
        try:
            await registration.ensure_node(
                ds, name, ipaddress.IPv4Interface(f"192.168.50.{10 + i}/24"), None
            )
            await KeyPublisher(ds, name).publish(V4, keys[i])
            return await registration.reconcile_tunnel_address(
                ds, name, V4, wireguard_enabled=True, host_encryption=False, pools=POOLS
            )
        finally:
            await ds.close()

    async def all_agents() -> tuple[list[Any], float]:
        start = time.perf_counter()
        results = await asyncio.gather(*(agent(i) for i in range(10)))
        return results, time.perf_counter() - start

    addresses, elapsed = asyncio.run(all_agents())
    print(f"\n10 agents: register + publish + claim + allocate in {elapsed * 1000:.0f} ms")

    assert len(set(addresses)) == 10
    for i, address in enumerate(addresses):
        node = _read(etcd, layout.node_key(f"node-{i}"))
        assert node["status"]["wireguardPublicKey"] == keys[i]
        assert node["spec"]["bgp"]["ipv4Address"] == f"192.168.50.{10 + i}/24"
        assert node["spec"]["wireguard"]["interfaceIPv4Address"] == str(address)
        block = ipaddress.ip_network(f"{address}/26", strict=False)
        assert address == block.network_address
        doc = _read(etcd, layout.ipam_block_key(block))
        check_block(doc)
        assert doc["attributes"] == [
            {
                "handle_id": f"wireguard-tunnel-addr-node-{i}",
                "secondary": {"node": f"node-{i}", "type": "wireguardTunnelAddress"},
            }
        ]
        handle = _read(etcd, layout.ipam_handle_key(f"wireguard-tunnel-addr-node-{i}"))
        assert handle == {
            "handleID": f"wireguard-tunnel-addr-node-{i}",
            "block": {str(block): 1},
            "deleted": False,
        }


@pytest.mark.parametrize("family", [V4, V6])
def test_tunnel_address_round_trip(etcd: EtcdServer, family: IPFamily):
    key = PrivateKey.generate().public_key().to_base64()
    field = "interfaceIPv4Address" if family is V4 else "interfaceIPv6Address"
    handle_id = layout.wireguard_handle_id("node-a", family)

    async def scenario() -> dict[str, Any]:
        ds = EtcdDatastore([etcd.endpoint])
        seen: dict[str, Any] = {}
        try:

            async def reconcile(*, wireguard_enabled: bool = True, host_encryption: bool = False):
                return await registration.reconcile_tunnel_address(
                    ds,
                    "node-a",
                    family,
                    wireguard_enabled=wireguard_enabled,
                    host_encryption=host_encryption,
                    pools=POOLS,
                )

            await registration.ensure_node(
                ds,
                "node-a",
                ipaddress.IPv4Interface("192.168.50.11/24"),
                ipaddress.IPv6Interface("fd00:50::11/64"),
            )
            seen["before key"] = await reconcile()
            await KeyPublisher(ds, "node-a").publish(family, key)
            start = time.perf_counter()
            seen["allocated"] = await reconcile()
            seen["allocate ms"] = (time.perf_counter() - start) * 1000
            seen["node after allocate"] = _read(etcd, layout.node_key("node-a"))
            seen["again"] = await reconcile()
            seen["host encryption"] = await reconcile(host_encryption=True)
            seen["node after release"] = _read(etcd, layout.node_key("node-a"))
            seen["handle after release"] = _read(etcd, layout.ipam_handle_key(handle_id))
            seen["re-enabled"] = await reconcile()
            seen["disabled"] = await reconcile(wireguard_enabled=False)
            seen["released twice"] = await ipam.release_tunnel_address(ds, "node-a", family)
        finally:
            await ds.close()
        return seen

    seen = asyncio.run(scenario())
    print(f"\n{family.label}: tunnel address allocation took {seen['allocate ms']:.1f} ms")

    first = POOLS[0 if family is V4 else 1].cidr.network_address
    assert seen["before key"] is None
    assert seen["allocated"] == first
    assert seen["node after allocate"]["spec"]["wireguard"] == {field: str(first)}
    assert seen["node after allocate"]["status"] == {
        ("wireguardPublicKey" if family is V4 else "wireguardPublicKeyV6"): key
    }
    assert seen["again"] == first
    assert seen["host encryption"] is None
    assert "wireguard" not in seen["node after release"]["spec"]
    assert seen["handle after release"] is None
    # libcalico-go appends freed ordinals to the tail of `unallocated`: the next one is taken.
    assert seen["re-enabled"] == first + 1
    assert seen["disabled"] is None
    assert seen["released twice"] == []
    block = ipaddress.ip_network(f"{first}/{26 if family is V4 else 122}")
    doc = _read(etcd, layout.ipam_block_key(block))
    check_block(doc)
    assert doc["attributes"] == []


def test_an_overwritten_key_is_restored_over_etcd(etcd: EtcdServer):
    mine = PrivateKey.generate().public_key().to_base64()
    intruder = PrivateKey.generate().public_key().to_base64()

    async def scenario() -> float:
        ds = EtcdDatastore([etcd.endpoint])
        try:
            await registration.ensure_node(ds, "node-a", None, None)
            publisher = KeyPublisher(ds, "node-a")
            await publisher.publish(V4, mine)
            node = _read(etcd, layout.node_key("node-a"))
            node["status"]["wireguardPublicKey"] = intruder
            node["status"]["extra"] = "kept"
            etcd.put(layout.node_key("node-a"), json.dumps(node))
            start = time.perf_counter()
            assert await publisher.publish(V4, mine)
            return (time.perf_counter() - start) * 1000
        finally:
            await ds.close()

    elapsed = asyncio.run(scenario())
    print(f"\nrestoring an overwritten key took {elapsed:.1f} ms")
    status = _read(etcd, layout.node_key("node-a"))["status"]
    assert status == {"wireguardPublicKey": mine, "extra": "kept"}


# ---- autodetect in a throwaway network namespace -------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mcad{os.getpid()}"
    _ip("netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_autodetect_finds_the_address_on_the_default_route_interface(netns: str, tmp_path: Path):
    n = ("-n", netns)
    _ip(*n, "link", "set", "lo", "up")
    # Two veth pairs inside the namespace: only uplink0 carries the default routes.
    _ip(*n, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p")
    _ip(*n, "link", "add", "side0", "type", "veth", "peer", "name", "side0p")
    for dev in ("uplink0", "uplink0p", "side0", "side0p"):
        _ip(*n, "link", "set", dev, "up")
    _ip(*n, "addr", "add", "198.51.100.7/24", "dev", "side0")
    _ip(*n, "addr", "add", "fd00:51::7/64", "dev", "side0", "nodad")
    _ip(*n, "addr", "add", "192.0.2.10/24", "dev", "uplink0")
    _ip(*n, "addr", "add", "192.0.2.11/24", "dev", "uplink0")  # secondary: not chosen
    _ip(*n, "addr", "add", "fd00:db8::10/64", "dev", "uplink0", "nodad")
    prefix = ["ip", "netns", "exec", netns]

    assert autodetect(V4, prefix_cmd=prefix) is None  # no default route yet
    assert autodetect(V6, prefix_cmd=prefix) is None

    _ip(*n, "route", "add", "default", "via", "192.0.2.1", "dev", "uplink0")
    _ip(*n, "-6", "route", "add", "default", "via", "fd00:db8::1", "dev", "uplink0")
    start = time.perf_counter()
    found4 = autodetect(V4, prefix_cmd=prefix)
    elapsed = (time.perf_counter() - start) * 1000
    found6 = autodetect(V6, prefix_cmd=prefix)
    print(f"\nautodetect IPv4 took {elapsed:.1f} ms")

    assert found4 == ipaddress.IPv4Interface("192.0.2.10/24")
    assert found6 == ipaddress.IPv6Interface("fd00:db8::10/64")

    # A better (lower metric) default route on the other interface wins.
    _ip(*n, "route", "add", "default", "via", "198.51.100.1", "dev", "side0", "metric", "5")
    _ip(*n, "route", "del", "default", "via", "192.0.2.1", "dev", "uplink0")
    _ip(*n, "route", "add", "default", "via", "192.0.2.1", "dev", "uplink0", "metric", "50")
    assert autodetect(V4, prefix_cmd=prefix) == ipaddress.IPv4Interface("198.51.100.7/24")
