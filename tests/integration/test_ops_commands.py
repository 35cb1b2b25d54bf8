"""The operator commands against a real etcd and a real two-node userspace mesh.

The mesh is programmed by meshcrypt's manager (`tests/integration/mesh.py`); the test writes the
matching Nodes, IPAM blocks and FelixConfiguration into etcd, as the agents would have. The commands
run in-process from the host with `--netns` / `--socket-dir` (etcd on the host's loopback is
reachable from there), and once inside a node with `nsenter`, as an operator on a lab node would.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshcrypt.adapters.backend import BackendMode
from meshcrypt.adapters.etcd import EtcdDatastore
from meshcrypt.cli.main import main
from meshcrypt.datastore import layout
from meshcrypt.model.keys import PrivateKey
from meshcrypt.ports import KeyValue
from tests.integration.conftest import NodeFactory
from tests.integration.etcd import EtcdServer, running_etcd
from tests.integration.mesh import IFACE, MeshNode, exchange, make_mesh

pytestmark = pytest.mark.integration

DEFAULT_CONFIG = layout.felix_configuration_key("default")


def _node_doc(n: MeshNode) -> str:
    return json.dumps(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "Node",
            "metadata": {"name": n.name},
            "spec": {
                "bgp": {"ipv4Address": f"{n.underlay}/24"},
                "wireguard": {"interfaceIPv4Address": n.tunnel},
            },
            "status": {"wireguardPublicKey": n.key.to_base64()},
        }
    )


def publish(server: EtcdServer, nodes: list[MeshNode]) -> None:
    """What the agents would have written: Nodes with keys and tunnel addresses, blocks."""
    for n in nodes:
        server.put(layout.node_key(n.name), _node_doc(n))
        block = f"/calico/ipam/v2/assignment/ipv4/block/{n.block.replace('/', '-')}"
        server.put(block, json.dumps({"cidr": n.block, "affinity": f"host:{n.name}"}))
        affinity = f"/calico/ipam/v2/host/{n.name}/ipv4/block/{n.block.replace('/', '-')}"
        server.put(affinity, json.dumps({"state": "confirmed", "deleted": False}))


@dataclass
class Env:
    server: EtcdServer
    a: MeshNode
    b: MeshNode
    capsys: pytest.CaptureFixture[str]

    def run(self, *argv: str) -> tuple[int, str, str]:
        """Run `meshcrypt ARGV --etcd-endpoints <etcd>` in-process."""
        code = main([*argv, "--etcd-endpoints", self.server.endpoint])
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def server_get(self, key: str) -> str:
        """The stored value of `key`, read with meshcrypt's etcd adapter."""

        async def read() -> KeyValue | None:
            datastore = EtcdDatastore([self.server.endpoint])
            try:
                return await datastore.get(key)
            finally:
                await datastore.close()

        kv = asyncio.run(read())
        assert kv is not None, key
        return kv.value.decode()

    def on_a(self, command: str, *extra: str) -> tuple[int, str, str]:
        """`status` or `doctor` for node a, from the host."""
        where = ("--node", "a", "--netns", self.a.sim.netns, "--socket-dir", self.a.sim.socket_dir)
        return self.run(command, *where, *extra)


@pytest.fixture
def env(node: NodeFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Env]:
    a, b = make_mesh([node("a"), node("b")], BackendMode.USERSPACE, tmp_path)
    try:
        with running_etcd(tmp_path) as server:
            for n in (a, b):
                n.apply()
            exchange([a, b])
            for n in (a, b):
                n.apply()
            publish(server, [a, b])
            config = {"kind": "FelixConfiguration", "apiVersion": "projectcalico.org/v3"}
            spec = {"wireguardEnabled": True, "wireguardMTU": 1400, "logSeverityScreen": "Info"}
            doc = {**config, "metadata": {"name": "default"}, "spec": spec, "x-unknown": {"k": 1}}
            server.put(DEFAULT_CONFIG, json.dumps(doc))
            yield Env(server, a, b, capsys)
    finally:
        for n in (a, b):
            if n.supervisor is not None:
                n.supervisor.stop(IFACE)


def test_status_shows_the_peer_by_node_name(env: Env) -> None:
    env.a.sim.run("ping", "-c", "2", "-i", "0.2", "-W", "2", env.b.tunnel)
    code, out, _ = env.on_a("status", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["datastore"]["reachable"] is True and doc["warnings"] == []
    [fam] = doc["families"]
    device = fam["device"]
    assert (device["name"], device["backend"], device["oper_up"]) == (IFACE, "userspace", True)
    assert (device["mtu"], device["listen_port"], device["fwmark"]) == (1400, 51820, 0x100000)
    assert device["public_key"] == env.a.key.to_base64()
    assert device["addresses"] == [f"{env.a.tunnel}/32"]
    [peer] = fam["peers"]
    assert peer["node"] == "b"
    assert peer["public_key"] == env.b.key.to_base64()
    assert peer["endpoint"] == f"{env.b.underlay}:51820"
    assert set(peer["allowed_ips"]) == {env.b.block, f"{env.b.tunnel}/32"}
    assert peer["latest_handshake"] is not None and peer["rx_bytes"] > 0
    routes = {r["dst"]: r for r in fam["routes"]}
    assert routes[env.b.block]["type"] == "device" and routes[env.b.block]["device"] == IFACE
    assert routes[env.a.block]["type"] == "throw"
    assert [r["text"] for r in fam["rules"]] == [
        "99: not from all fwmark 0x100000/0x100000 lookup 1"
    ]

    code, out, _ = env.on_a("status")
    assert code == 0
    assert "peer b" in out and "wireguard.cali (userspace), up" in out
    assert "ago" in out  # the handshake's age


def test_doctor_passes_then_names_a_deleted_route_and_a_changed_key(env: Env) -> None:
    code, out, _ = env.on_a("doctor")
    assert code == 0, out
    assert "0 failed" in out

    env.a.sim.run("ip", "route", "del", env.b.block, "table", "1")
    code, out, _ = env.on_a("doctor", "--json")
    assert code == 1
    failed = [c for c in json.loads(out)["checks"] if c["status"] == "fail"]
    assert [c["id"] for c in failed] == ["routes"]
    assert failed[0]["details"] == [f"missing: {env.b.block} dev {IFACE} (node b)"]
    assert "resync" in failed[0]["hint"]

    env.a.manager.queue_resync()  # what the agent does every RouteRefreshInterval
    env.a.apply()
    assert env.on_a("doctor")[0] == 0

    other = PrivateKey.generate().public_key()
    doc = json.loads(_node_doc(env.a))
    doc["status"]["wireguardPublicKey"] = other.to_base64()
    env.server.put(layout.node_key("a"), json.dumps(doc))
    code, out, _ = env.on_a("doctor")
    assert code == 1
    line = next(x for x in out.splitlines() if x.startswith("FAIL"))
    assert "IPv4 public-key" in line and other.to_base64() in line
    assert "republishes" in out


def test_status_and_doctor_inside_the_node_without_etcd(env: Env) -> None:
    """Run as an operator inside a lab node would; etcd (host loopback) is unreachable there."""
    command = (sys.executable, "-m", "meshcrypt")
    out = env.a.sim.run(*command, "status", "--json", "--etcd-endpoints", env.server.endpoint)
    doc = json.loads(out)
    assert doc["datastore"]["reachable"] is False
    assert any("unreachable" in w for w in doc["warnings"])
    [fam] = doc["families"]
    assert fam["enabled"] is None and fam["device"]["backend"] == "userspace"
    [peer] = fam["peers"]
    assert peer["node"] is None and peer["public_key"] == env.b.key.to_base64()

    res = env.a.sim.run(*command, "doctor", "--etcd-endpoints", env.server.endpoint, check=False)
    assert "FAIL  datastore" in res
    assert "PASS  IPv4 device" in res


def test_config_set_get_unset_round_trip(env: Env) -> None:
    code, out, err = env.run("config", "set", "WireguardMTU", "1380")
    assert code == 0, err
    assert "FelixConfiguration default: spec.wireguardMTU = 1380 (updated)" in out
    code, out, _ = env.run("config", "get", "wireguardMTU", "--node", "a", "--json")
    view = json.loads(out)
    assert view["felixconfiguration_default"] == 1380
    assert (view["effective"], view["source"]) == (1380, "FelixConfiguration default")
    stored = json.loads(env.server_get(DEFAULT_CONFIG))
    assert stored["spec"]["logSeverityScreen"] == "Info" and stored["x-unknown"] == {"k": 1}

    code, _, err = env.run("config", "set", "WireguardMTU", "99999")
    assert code == 2
    assert "WireguardMTU" in err and "between 68 and 65535" in err
    assert json.loads(env.server_get(DEFAULT_CONFIG))["spec"]["wireguardMTU"] == 1380

    code, out, _ = env.run(
        "config", "set", "FELIX_WIREGUARDPERSISTENTKEEPALIVE", "25", "--node", "a"
    )
    assert code == 0 and "(created)" in out
    created = json.loads(env.server_get(layout.felix_configuration_key("node.a")))
    assert created["apiVersion"] == "projectcalico.org/v3"
    assert created["kind"] == "FelixConfiguration"
    assert created["metadata"]["name"] == "node.a"
    assert created["spec"] == {"wireguardKeepAlive": "25s"}
    code, out, _ = env.run("config", "get", "WireguardPersistentKeepAlive", "--node", "a")
    assert "25s  (from FelixConfiguration node.a)" in out

    assert env.run("config", "unset", "WireguardMTU")[0] == 0
    _, out, _ = env.run("config", "get", "WireguardMTU", "--node", "a", "--json")
    assert json.loads(out)["source"] == "built-in default"

    code, out, _ = env.run("config", "list", "--node", "a")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[3:]}
    assert (
        "true" in rows["WireguardEnabled"]
        and "FelixConfiguration default" in rows["WireguardEnabled"]
    )


def test_node_list(env: Env) -> None:
    code, out, _ = env.run("node", "list", "--json")
    assert code == 0
    rows = {n["name"]: n for n in json.loads(out)["nodes"]}
    assert set(rows) == {"a", "b"}
    assert rows["b"]["blocks"] == [env.b.block]
    assert rows["b"]["public_key"] == env.b.key.to_base64()
    assert rows["b"]["tunnel_ipv4"] == env.b.tunnel
    assert rows["b"]["ipv4_address"] == f"{env.b.underlay}/24"

    dup = json.loads(_node_doc(env.b))
    dup["metadata"]["name"] = "c"
    env.server.put(layout.node_key("c"), json.dumps(dup))
    env.server.put(layout.node_key("broken"), "{not json")
    code, out, _ = env.run("node", "list")
    assert code == 0
    assert out.count(f"{env.b.key.to_base64()} (DUPLICATE)") == 2
    assert "skipped 1 invalid resource(s):" in out and "nodes/broken: bad JSON" in out
    code, out, _ = env.on_a("doctor")
    assert code == 1
    assert "FAIL  duplicate-keys" in out and "nodes b, c" in out
