"""The lab's pure parts: names and addresses, the state file, the pcap classifier, the convergence
check, ping parsing, and the CNI-plugin writes (over the in-memory datastore)."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import struct
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest

from meshcrypt.adapters.lab_proc import Finished, ProcessId
from meshcrypt.datastore import codecs, layout
from meshcrypt.fakes.datastore import FakeDatastore
from meshcrypt.lab import ping
from meshcrypt.lab.agents import Device, NodeView, problems
from meshcrypt.lab.cluster import add_pod, claim_blocks, workload_endpoint_name, write_cluster
from meshcrypt.lab.config import LabConfig, LabError, cali_name
from meshcrypt.lab.pcap import PcapError, classify, wireguard_kind
from meshcrypt.lab.state import EtcdRecord, LabState, NodeRecord, PodRecord
from meshcrypt.model.keys import Key
from meshcrypt.model.net import IPFamily
from meshcrypt.model.resources import NodeResource

V4, V6 = IPFamily.V4, IPFamily.V6

# ---- config ----------------------------------------------------------------------------------------


def test_names_and_addresses():
    config = LabConfig(nodes=3, families=(V4, V6))
    assert config.bridge == "mclab0"
    assert config.node_names() == ["node1", "node2", "node3"]
    assert config.netns("node2-pod1") == "mclab-node2-pod1"
    assert config.host_ifname(12) == "mclab-n12"
    assert str(config.bridge_address(V4)) == "192.168.50.1/24"
    assert str(config.bridge_address(V6)) == "fd00:50::1/64"
    assert str(config.node_address(V4, 1)) == "192.168.50.11/24"
    assert str(config.node_address(V6, 1)) == "fd00:50::11/64"  # same digits as IPv4
    assert str(config.node_address(V6, 3)) == "fd00:50::13/64"
    assert config.etcd_node_endpoint() == "http://192.168.50.1:2379"
    assert LabConfig(families=(V6,)).etcd_node_endpoint() == "http://[fd00:50::1]:2379"
    assert config.is_host_ifname("mclab0") and config.is_host_ifname("mclab-n7")
    assert not config.is_host_ifname("mclab-n") and not config.is_host_ifname("mclab00")
    assert not config.is_host_ifname("mclabx-n1") and not config.is_host_ifname("eth0")


def test_cali_name_is_calicos():
    # libcalico-go VethNameForWorkload: "cali" + the first 11 hex digits of sha1("<ns>.<pod>").
    expected = "cali" + hashlib.sha1(b"default.node1-pod1").hexdigest()[:11]
    assert cali_name("node1-pod1") == expected
    assert len(expected) == 15  # the kernel's limit


def test_names_fit_the_interface_limit():
    config = LabConfig(prefix="abcdefgh", nodes=200)
    config.validate()
    assert len(config.host_ifname(200)) <= 15 and len(config.bridge) <= 15


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prefix": "Lab"}, "prefix 'Lab'"),
        ({"prefix": "toolongname"}, "prefix 'toolongname'"),
        ({"nodes": 0}, "--nodes 0"),
        ({"pods_per_node": 64}, "--pods-per-node 64"),
        ({"pods_per_node": -1}, "--pods-per-node -1"),
        ({"backend": "magic"}, "--backend magic"),
        ({"underlay_v4": IPv4Network("192.168.50.0/29")}, "too small"),
        ({"converge_timeout": 0}, "--timeout"),
    ],
)
def test_bad_settings_are_refused(changes, message):
    with pytest.raises(LabError, match=message.replace("(", r"\(")):
        LabConfig(**changes).validate()


def test_config_round_trips_through_json():
    config = LabConfig(
        nodes=5,
        pods_per_node=0,
        families=(V6,),
        host_encryption=True,
        backend="auto",
        agents=False,
        prefix="x1",
        underlay_v4=IPv4Network("192.168.9.0/24"),
        underlay_v6=IPv6Network("fd00:9::/64"),
        converge_timeout=12.5,
    )
    assert LabConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(LabError, match="unreadable"):
        LabConfig.from_json({"nodes": "three"})


# ---- state file ------------------------------------------------------------------------------------


def test_state_round_trips(tmp_path: Path):
    state = LabState(dir=tmp_path, config=LabConfig(nodes=1))
    state.bridge = "mclab0"
    state.etcd = EtcdRecord(
        data_dir="/d",
        log="/l",
        client_urls=["http://a:1"],
        node_endpoint="http://a:1",
        host_endpoint="http://127.0.0.1:2",
        peer_url="http://127.0.0.1:3",
        process=ProcessId(10, 20),
    )
    state.nodes.append(
        NodeRecord("node1", 1, "mclab-node1", "mclab-n1", ["192.168.50.11/24"], ProcessId(11, 21))
    )
    state.nodes[0].agent = ProcessId(12, 22)
    state.nodes[0].blocks = ["10.65.0.0/26"]
    state.pods.append(PodRecord("node1-pod1", "node1", "mclab-node1-pod1", "cali1", ["10.65.0.0"]))
    state.save()
    loaded = LabState.load(tmp_path)
    assert loaded is not None
    assert loaded.__dict__ == state.__dict__
    assert not (tmp_path / "lab.tmp").exists()


def test_missing_and_broken_state(tmp_path: Path):
    assert LabState.load(tmp_path) is None
    (tmp_path / "lab.json").write_text("{not json")
    with pytest.raises(LabError, match="cannot read"):
        LabState.load(tmp_path)
    (tmp_path / "lab.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(LabError, match="unknown state version"):
        LabState.load(tmp_path)
    (tmp_path / "lab.json").write_text(json.dumps({"version": 1, "config": {}}))
    with pytest.raises(LabError):
        LabState.load(tmp_path)


# ---- pcap ------------------------------------------------------------------------------------------

MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0,
        0,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return MAC + b"\x08\x00" + header + payload


def ipv6(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack("!IHBB", 0x60000000, len(payload), proto, 64)
    header += ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    return MAC + b"\x86\xdd" + header + payload


def udp(payload: bytes, sport: int = 51820, dport: int = 51820) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def wg(kind: int, length: int) -> bytes:
    return bytes([kind, 0, 0, 0]) + b"\x11" * (length - 4)


def pcap(frames: list[bytes], order: str = "<", magic: int = 0xA1B2C3D4) -> bytes:
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
    for frame in frames:
        out += struct.pack(order + "IIII", 0, 0, len(frame), len(frame)) + frame
    return out


PODS = [ipaddress.ip_network("10.65.0.0/16"), ipaddress.ip_network("fd00:65::/48")]


@pytest.mark.parametrize(
    ("order", "magic"), [("<", 0xA1B2C3D4), (">", 0xA1B2C3D4), ("<", 0xA1B23C4D)]
)
def test_classify_sorts_wireguard_plaintext_and_other(order, magic):
    frames = [
        ipv4("192.168.50.11", "192.168.50.12", 17, udp(wg(1, 148))),
        ipv4("192.168.50.12", "192.168.50.11", 17, udp(wg(2, 92))),
        ipv4("192.168.50.11", "192.168.50.12", 17, udp(wg(4, 32 + 16 * 6), 40000, 51999)),
        ipv6("fd00:50::11", "fd00:50::12", 17, udp(wg(4, 32))),
        ipv4("10.65.0.0", "10.65.0.64", 1, b"\x08\x00" + b"\0" * 62),  # plaintext echo
        ipv6("fd00:65::1", "fd00:65::40", 58, b"\x80\x00" + b"\0" * 30),
        ipv4("192.168.50.11", "192.168.50.1", 6, b"\0" * 20),  # etcd: no pod address
        ipv4("192.168.50.11", "192.168.50.12", 17, udp(b"\x04\x00\x00\x00abc")),  # too short for WG
        MAC + b"\x08\x06" + b"\0" * 28,  # ARP
    ]
    result = classify(pcap(frames, order, magic), PODS)
    assert (result.wireguard, result.plaintext_pod, result.other) == (4, 2, 3)
    assert result.wireguard_kinds == {
        "handshake initiation": 1,
        "handshake response": 1,
        "data": 2,
    }
    assert result.examples == ["10.65.0.0 → 10.65.0.64 ICMP", "fd00:65::1 → fd00:65::40 ICMPv6"]


def test_wireguard_kind_checks_type_and_length():
    assert wireguard_kind(udp(wg(3, 64))) == "cookie reply"
    assert wireguard_kind(udp(wg(1, 147))) is None
    assert wireguard_kind(udp(wg(4, 40))) is None  # not 32 + 16·n
    assert wireguard_kind(udp(b"\x01\x01\x00\x00" + b"\0" * 144)) is None


def test_classify_refuses_what_it_cannot_read():
    with pytest.raises(PcapError, match="pcapng"):
        classify(b"\x0a\x0d\x0d\x0a" + b"\0" * 40, PODS)
    with pytest.raises(PcapError, match="shorter"):
        classify(b"", PODS)
    not_ethernet = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 113)
    with pytest.raises(PcapError, match="link type 113"):
        classify(not_ethernet, PODS)
    assert classify(pcap([]), PODS).total == 0


# ---- convergence -----------------------------------------------------------------------------------

KEYS = {n: Key(bytes([i]) * 32) for i, n in enumerate(["node1", "node2", "node3"], start=1)}


def view(
    name: str, peers: list[str], *, published: bool = True, ready: bool | None = True
) -> NodeView:
    resource = NodeResource(name, public_key=KEYS[name] if published else None)
    device = Device(str(KEYS[name]), {str(KEYS[p]): 0 for p in peers})
    agent = ProcessId(1, 1)
    return NodeView(name, agent, True, resource, {V4: device}, ready)


def check(*views: NodeView) -> dict[str, list[str]]:
    return problems(views, [V4], {v.name: v for v in views})


def test_converged_when_every_node_has_every_other_as_peer():
    assert (
        check(
            view("node1", ["node2", "node3"]),
            view("node2", ["node1", "node3"]),
            view("node3", ["node1", "node2"]),
        )
        == {}
    )


def test_not_converged_names_what_is_missing():
    found = check(
        view("node1", ["node2"]),
        view("node2", ["node1", "node3"], ready=False),
        view("node3", ["node1", "node2"]),
    )
    assert found == {
        "node1": ["wireguard.cali has 1/2 peers"],
        "node2": ["agent not ready"],
    }
    # node3 has no key: the others must not have it as a peer, and it is named itself.
    found = check(
        view("node1", ["node2"]),
        view("node2", ["node1", "node3"]),
        view("node3", ["node1", "node2"], published=False),
    )
    assert found == {
        "node2": ["wireguard.cali has 1/2 peers and 1 unknown"],
        "node3": ["no IPv4 public key published"],
    }
    gone = NodeView("node1", ProcessId(1, 1), False, None, {V4: None})
    assert check(gone)["node1"] == [
        "agent not running",
        "Node resource not registered",
        "no IPv4 public key published",
        "no wireguard.cali device",
    ]


# ---- ping --------------------------------------------------------------------------------------------


def test_ping_results_are_parsed():
    pod = PodRecord("node1-pod1", "node1", "ns1", "cali1", ["10.65.0.0"])
    target = PodRecord("node2-pod1", "node2", "ns2", "cali2", ["10.65.0.64"])
    p = ping.Ping(pod, target, "10.65.0.64")
    out = (
        "--- 10.65.0.64 ping statistics ---\n27 packets transmitted, 3 received, 88% packet loss\n"
    )
    r = ping.result(p, 3, Finished(0, out, ""))
    assert (r.sent, r.received, r.ok) == (27, 3, True)
    r = ping.result(p, 3, Finished(1, out.replace(" 3 received", " 2 received"), ""))
    assert not r.ok
    r = ping.result(p, 3, Finished(2, "", "ping: connect: Network is unreachable\n"))
    assert not r.ok and r.error == "ping: connect: Network is unreachable"
    cmd = ping.command(p, 3, 9.5)
    assert cmd[:4] == ["ip", "netns", "exec", "ns1"]
    assert cmd[cmd.index("-w") + 1] == "10" and cmd[-1] == "10.65.0.64"


def test_warm_up_pings_every_node_pair_once_one_way_per_family(tmp_path: Path):
    state = LabState(
        dir=tmp_path,
        config=LabConfig(nodes=3, pods_per_node=2, families=(IPFamily.V4, IPFamily.V6)),
    )
    for i in range(1, 4):
        state.nodes.append(NodeRecord(f"node{i}", i, f"ns{i}", f"h{i}", []))
        for k in (1, 2):
            state.pods.append(
                PodRecord(
                    f"node{i}-pod{k}",
                    f"node{i}",
                    f"ns{i}{k}",
                    "c",
                    [f"10.{i}.0.{k}", f"fd{i}::{k}"],
                )
            )
    plan = ping.warm_up_plan(state)
    pairs = [(p.source.name, p.target.name, p.family) for p in plan]
    for family in (IPFamily.V4, IPFamily.V6):
        assert [(s, t) for s, t, f in pairs if f is family] == [
            ("node1-pod1", "node2-pod1"),
            ("node1-pod1", "node3-pod1"),
            ("node2-pod1", "node3-pod1"),
        ]
    assert {p.address for p in plan if p.family is IPFamily.V6} == {"fd2::1", "fd3::1"}


# ---- the CNI plugin's writes ---------------------------------------------------------------------


def test_pods_get_addresses_from_their_nodes_blocks():
    async def scenario():
        ds = FakeDatastore()
        config = LabConfig(nodes=2, families=(V4, V6))
        pools = await write_cluster(ds, config)
        assert sorted(str(p.cidr) for p in pools) == ["10.65.0.0/16", "fd00:65::/48"]
        blocks = {n: await claim_blocks(ds, n, config.families, pools) for n in ("node1", "node2")}
        assert [str(b) for b in blocks["node1"]] == ["10.65.0.0/26", "fd00:65::/122"]
        assert [str(b) for b in blocks["node2"]] == ["10.65.0.64/26", "fd00:65::40/122"]
        addresses = {}
        for node in ("node1", "node2"):
            for pod in (f"{node}-pod1", f"{node}-pod2"):
                addresses[pod] = await add_pod(
                    ds, prefix="p", node=node, pod=pod, ifname=cali_name(pod), blocks=blocks[node]
                )
        # Again: idempotent, the same addresses.
        again = await add_pod(
            ds, prefix="p", node="node1", pod="node1-pod1", ifname="x", blocks=blocks["node1"]
        )
        return ds, blocks, addresses, again

    ds, blocks, addresses, again = asyncio.run(scenario())
    assert [str(a) for a in addresses["node1-pod1"]] == ["10.65.0.0", "fd00:65::"]
    assert [str(a) for a in addresses["node1-pod2"]] == ["10.65.0.1", "fd00:65::1"]
    assert [str(a) for a in addresses["node2-pod1"]] == ["10.65.0.64", "fd00:65::40"]
    assert again == addresses["node1-pod1"]
    everything = [a for found in addresses.values() for a in found]
    assert len(set(everything)) == len(everything)
    snapshot = ds.snapshot()
    felix = json.loads(snapshot[layout.felix_configuration_key("default")])
    assert felix["spec"]["wireguardEnabledV6"] is True
    key = layout.workload_endpoint_key("default", workload_endpoint_name("node2", "node2-pod1"))
    wep = codecs.decode_workload_endpoint(key, snapshot[key])
    assert wep.node == "node2"
    assert [str(n) for n in wep.ip_networks] == ["10.65.0.64/32", "fd00:65::40/128"]
    assert workload_endpoint_name("node2", "node2-pod1") == "node2-k8s-node2--pod1-eth0"
    block = json.loads(snapshot[layout.ipam_block_key(blocks["node1"][0])])
    handles = {a["handle_id"] for a in block["attributes"]}
    assert len(handles) == 2 and all(h.startswith("k8s-pod-network.") for h in handles)
    assert block["unallocated"][:2] == [2, 3]


def test_cluster_resources_are_written_once():
    async def scenario():
        ds = FakeDatastore()
        await write_cluster(ds, LabConfig())
        await write_cluster(ds, LabConfig())

    with pytest.raises(LabError, match="already holds"):
        asyncio.run(scenario())


def test_health_port_follows_the_agents_environment():
    from meshcrypt.lab.agents import health_port

    assert health_port({"FELIX_HEALTHENABLED": "true"}) == 9099
    assert health_port({"FELIX_HEALTHENABLED": "True", "FELIX_HEALTHPORT": "9199"}) == 9199
    assert health_port({"FELIX_HEALTHENABLED": "false"}) is None
    assert health_port({}) is None
