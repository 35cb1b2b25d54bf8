"""Decoding the cluster from etcd key-values, and `meshcrypt node list`."""

from __future__ import annotations

import asyncio
import json

from meshcrypt.datastore import layout
from meshcrypt.fakes import FakeDatastore
from meshcrypt.model.keys import PrivateKey
from meshcrypt.model.net import IPFamily
from meshcrypt.ops.cluster import decode_cluster, duplicate_keys, read_cluster
from meshcrypt.ops.nodes import build_node_list, render_node_list
from meshcrypt.ports import KeyValue

K1 = PrivateKey.generate().public_key().to_base64()
K2 = PrivateKey.generate().public_key().to_base64()


def node(name: str, v4: str | None = None, key: str | None = None, **extra) -> bytes:
    spec: dict[str, object] = {}
    if v4:
        spec["bgp"] = {"ipv4Address": v4}
    if "tunnel" in extra:
        spec["wireguard"] = {"interfaceIPv4Address": extra.pop("tunnel")}
    status = {"wireguardPublicKey": key} if key else {}
    status.update(extra)
    doc = {"kind": "Node", "apiVersion": "projectcalico.org/v3", "metadata": {"name": name}}
    return json.dumps({**doc, "spec": spec, "status": status}).encode()


def store() -> dict[str, bytes]:
    return {
        layout.node_key("a"): node("a", "10.99.0.1/24", K1, tunnel="10.65.0.1"),
        layout.node_key("b"): node("b", "10.99.0.2/24", K2, wireguardPublicKeyV6=K1),
        layout.node_key("c"): node("c", "10.99.0.3/24", K2),
        layout.node_key("d"): node("d", "10.99.0.4/24"),
        layout.node_key("bad"): b"{not json",
        layout.node_key("badkey"): node("badkey", "10.99.0.5/24", "not-a-key"),
        "/calico/ipam/v2/assignment/ipv4/block/10.65.0.0-26": json.dumps(
            {"cidr": "10.65.0.0/26", "affinity": "host:a"}
        ).encode(),
        "/calico/ipam/v2/assignment/ipv4/block/10.65.9.0-26": json.dumps(
            {"cidr": "10.65.9.0/26", "affinity": "host:a", "deleted": True}
        ).encode(),
        "/calico/ipam/v2/host/d/ipv4/block/10.65.3.0-26": json.dumps(
            {"state": "confirmed", "deleted": False}
        ).encode(),
        "/calico/ipam/v2/host/d/ipv4/block/10.65.4.0-26": json.dumps({"state": "pending"}).encode(),
        layout.felix_configuration_key("default"): json.dumps(
            {"kind": "FelixConfiguration", "spec": {"wireguardEnabled": True}}
        ).encode(),
        "/calico/resources/v3/projectcalico.org/unrelated/x": b"ignored",
    }


def kvs() -> list[KeyValue]:
    return [KeyValue(k, v, 1, 1) for k, v in store().items()]


def test_decode_keeps_valid_resources_and_lists_invalid_ones() -> None:
    cluster = decode_cluster(kvs())
    assert sorted(cluster.nodes) == ["a", "b", "c", "d"]
    assert sorted(bad.key.rsplit("/", 1)[1] for bad in cluster.invalid) == ["bad", "badkey"]
    assert any("bad WireGuard public key" in bad.reason for bad in cluster.invalid)
    assert cluster.felix_spec("default") == {"wireguardEnabled": True}
    assert cluster.felix_spec("node.a") == {}
    assert [str(c) for c in cluster.node_blocks("a")] == ["10.65.0.0/26"]
    assert [str(c) for c in cluster.node_blocks("d")] == ["10.65.3.0/26"]


def test_duplicate_keys_per_family() -> None:
    cluster = decode_cluster(kvs())
    [(key, names)] = duplicate_keys(cluster.nodes, IPFamily.V4).items()
    assert key.to_base64() == K2 and names == ["b", "c"]
    assert duplicate_keys(cluster.nodes, IPFamily.V6) == {}  # K1 as b's v6 key is another family


def test_read_cluster_through_the_port() -> None:
    ds = FakeDatastore()
    for key, value in store().items():
        ds.server_put(key, value)
    cluster = asyncio.run(read_cluster(ds))
    assert sorted(cluster.nodes) == ["a", "b", "c", "d"]
    assert len(cluster.affinities) == 2


def test_node_list_marks_duplicates_and_skips_invalid() -> None:
    listing = build_node_list(decode_cluster(kvs()))
    rows = {n.name: n for n in listing.nodes}
    assert list(rows) == ["a", "b", "c", "d"]
    a = rows["a"]
    assert (a.ipv4_address, a.public_key, a.tunnel_ipv4) == ("10.99.0.1/24", K1, "10.65.0.1")
    assert a.blocks == ("10.65.0.0/26",)
    assert rows["b"].duplicate_key and rows["c"].duplicate_key and not rows["a"].duplicate_key
    assert rows["b"].public_key_v6 == K1 and not rows["b"].duplicate_key_v6
    assert rows["d"].public_key is None and rows["d"].blocks == ("10.65.3.0/26",)
    out = render_node_list(listing)
    assert f"{K2} (DUPLICATE)" in out
    assert "skipped 2 invalid resource(s):" in out
    assert "badkey: " in out and "bad WireGuard public key" in out
    doc = json.loads(json.dumps(listing.to_json()))
    assert doc["schema"] == "meshcrypt/nodes/v1"
    assert set(doc["nodes"][0]) == {
        "name",
        "ipv4_address",
        "ipv6_address",
        "addresses",
        "blocks",
        "public_key",
        "public_key_v6",
        "tunnel_ipv4",
        "tunnel_ipv6",
        "duplicate_key",
        "duplicate_key_v6",
    }
    assert {bad["key"].rsplit("/", 1)[1] for bad in doc["invalid"]} == {"bad", "badkey"}


def test_empty_node_list() -> None:
    assert render_node_list(build_node_list(decode_cluster([]))) == "no nodes registered\n"
