"""The wireguard-go UAPI client: encoding and parsing alone, then against a real wireguard-go in a node.

Run with ``-s`` to see the 5,000-peer timings.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import time
from pathlib import Path

import pytest

from meshcrypt.adapters.nodens import veth_pair
from meshcrypt.adapters.wireguard_uapi import (
    UapiWireguardDevices,
    encode_set,
    parse_get,
)
from meshcrypt.model.dataplane import Device, DeviceConfig, Endpoint, PeerConfig
from meshcrypt.model.errors import KernelError, NotFound
from meshcrypt.model.keys import Key, PrivateKey

integration = pytest.mark.integration

V4 = ipaddress.ip_network
IP = ipaddress.ip_address


def _pub(seed: int) -> Key:
    return PrivateKey(bytes([seed]) * 32).public_key()


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _bulk_config(n: int) -> DeviceConfig:
    peers = tuple(
        PeerConfig(
            Key(os.urandom(32)),
            endpoint=Endpoint(IP(f"10.{(i >> 8) & 255}.{i & 255}.1"), 51820),
            replace_allowed_ips=True,
            allowed_ips=(V4(f"10.{100 + (i >> 8)}.{i & 255}.0/26"),),
        )
        for i in range(n)
    )
    return DeviceConfig(replace_peers=True, peers=peers)


# ---- encoding and parsing, no wireguard-go needed ------------------------------------------------


def test_encode_orders_device_keys_first_and_peer_flags_right_after_the_key() -> None:
    k1, k2, k3 = _pub(1), _pub(2), _pub(3)
    private = PrivateKey(bytes(range(32)))
    cfg = DeviceConfig(
        private_key=private,
        listen_port=51820,
        fwmark=0x100000,
        replace_peers=True,
        peers=(
            PeerConfig(
                k1,
                update_only=True,
                endpoint=Endpoint(IP("fd00::1"), 51821),
                persistent_keepalive=25,
                replace_allowed_ips=True,
                allowed_ips=(V4("10.0.0.0/24"), V4("fd00:1::/64")),
            ),
            PeerConfig(k2, remove=True, endpoint=Endpoint(IP("10.0.0.9"), 1)),
            PeerConfig(k3, endpoint=Endpoint(IP("10.0.0.1"), 51820)),
        ),
    )
    assert encode_set(cfg).decode().split("\n") == [
        "set=1",
        f"private_key={private.raw.hex()}",
        "listen_port=51820",
        "fwmark=1048576",  # wireguard-go rejects hex here
        "replace_peers=true",
        f"public_key={k1.to_hex()}",
        "update_only=true",
        "endpoint=[fd00::1]:51821",
        "persistent_keepalive_interval=25",
        "replace_allowed_ips=true",
        "allowed_ip=10.0.0.0/24",
        "allowed_ip=fd00:1::/64",
        f"public_key={k2.to_hex()}",
        "remove=true",  # nothing else for a removed peer
        f"public_key={k3.to_hex()}",
        "endpoint=10.0.0.1:51820",
        "",
        "",
    ]


def test_encode_of_nothing_but_settings_and_zero_values() -> None:
    cfg = DeviceConfig(fwmark=0, peers=(PeerConfig(_pub(1), persistent_keepalive=0),))
    assert (
        encode_set(cfg)
        == (
            f"set=1\nfwmark=0\npublic_key={_pub(1).to_hex()}\npersistent_keepalive_interval=0\n\n"
        ).encode()
    )


def test_encode_5000_peers_is_fast() -> None:
    cfg = _bulk_config(5000)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        payload = encode_set(cfg)
        timings.append(time.perf_counter() - start)
    assert payload.count(b"\npublic_key=") == 5000
    assert payload.count(b"\nallowed_ip=") == 5000
    print(f"\nencode 5000 peers: {_median(timings) * 1000:.1f} ms, {len(payload)} bytes")


def test_parse_get_defaults_and_fields() -> None:
    k1, k2 = _pub(1), _pub(2)
    reply = "\n".join(
        [
            "listen_port=51820",
            f"public_key={k1.to_hex()}",
            "preshared_key=" + "00" * 32,
            "protocol_version=1",
            "endpoint=[fd00::1]:51821",
            "last_handshake_time_sec=1700000000",
            "last_handshake_time_nsec=500000000",
            "tx_bytes=10",
            "rx_bytes=20",
            "persistent_keepalive_interval=25",
            "some_future_key=whatever",
            "allowed_ip=10.0.0.0/24",
            "allowed_ip=fd00:1::/64",
            f"public_key={k2.to_hex()}",
            "last_handshake_time_sec=0",
            "last_handshake_time_nsec=0",
        ]
    )
    dev = parse_get("wg0", reply)
    # No private_key line: unset. No fwmark line: 0.
    assert (dev.private_key, dev.public_key, dev.listen_port, dev.fwmark) == (None, None, 51820, 0)
    p1, p2 = dev.peers[k1], dev.peers[k2]
    assert p1.endpoint == Endpoint(IP("fd00::1"), 51821)
    assert p1.last_handshake == pytest.approx(1700000000.5)
    assert (p1.tx_bytes, p1.rx_bytes, p1.persistent_keepalive) == (10, 20, 25)
    assert p1.allowed_ips == {V4("10.0.0.0/24"), V4("fd00:1::/64")}
    assert (p2.endpoint, p2.allowed_ips, p2.last_handshake) == (None, frozenset(), 0.0)


def test_parse_get_derives_the_public_key_and_hides_a_bad_private_key() -> None:
    private = PrivateKey.generate()
    dev = parse_get("wg0", f"private_key={private.raw.hex()}\nfwmark=1048576")
    assert dev.private_key == private
    assert dev.public_key == private.public_key()
    assert dev.fwmark == 0x100000
    garbage = private.raw.hex()[:-2] + "zz"
    with pytest.raises(KernelError) as info:
        parse_get("wg0", f"private_key={garbage}")
    assert info.value.errno == errno.EPROTO
    assert garbage not in str(info.value)
    assert info.value.__cause__ is None


def test_missing_and_stale_sockets_are_not_found(tmp_path: Path) -> None:
    client = UapiWireguardDevices(str(tmp_path))
    with pytest.raises(NotFound):
        client.device("nope")
    with pytest.raises(NotFound):
        client.configure("nope", DeviceConfig(listen_port=1))
    # A socket file left by a killed wireguard-go: nobody listens.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    with pytest.raises(NotFound) as info:
        client.device("stale")
    assert info.value.errno == errno.ECONNREFUSED
    # A name that is no interface name never becomes a path outside the socket directory.
    (tmp_path / "sub" / "y").mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(tmp_path / "sub" / "x.sock"))
        listener.listen()
        with pytest.raises(NotFound) as info:
            UapiWireguardDevices(str(tmp_path / "sub" / "y"), timeout=0.5).device("../x")
        assert info.value.errno == errno.ENODEV


def test_an_empty_configuration_sends_nothing(tmp_path: Path) -> None:
    # No socket exists, so anything sent would raise NotFound.
    UapiWireguardDevices(str(tmp_path)).configure("nope", DeviceConfig())


# ---- against wireguard-go ----------------------------------------------------------------------


def _dump(wg) -> tuple[list[str], dict[str, list[str]]]:
    """`wg show <if> dump` inside the node: the device line and peer lines by base64 key."""
    lines = wg.node.run("wg", "show", wg.iface, "dump").strip().split("\n")
    device = lines[0].split("\t")
    peers = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    return device, peers


@integration
def test_a_fresh_device_has_no_key_no_mark_and_no_peers(wireguard_go_node) -> None:
    dev = wireguard_go_node.devices.device(wireguard_go_node.iface)
    assert dev == Device(
        name="wireguard.cali",
        private_key=None,
        public_key=None,
        listen_port=dev.listen_port,  # wireguard-go binds a random port when none is set
        fwmark=0,
        peers={},
    )


@integration
def test_device_settings_round_trip(wireguard_go_node) -> None:
    wg, name = wireguard_go_node.devices, wireguard_go_node.iface
    private = PrivateKey(b"\xa0" * 32)  # not clamped; wireguard-go stores a0..a0 as a0..60
    wg.configure(name, DeviceConfig(private_key=private, listen_port=51820, fwmark=0x100000))
    dev = wg.device(name)
    assert dev.private_key == private.clamped() != private
    assert dev.public_key == private.public_key()
    assert (dev.listen_port, dev.fwmark) == (51820, 0x100000)
    line, _ = _dump(wireguard_go_node)
    assert line == [
        private.clamped().to_base64(),
        private.public_key().to_base64(),
        "51820",
        "0x100000",
    ]
    wg.configure(name, DeviceConfig(fwmark=0))
    assert wg.device(name).fwmark == 0
    assert _dump(wireguard_go_node)[0][3] == "off"


@integration
def test_peers_in_one_call_update_only_replace_and_remove(
    wireguard_go_node,
) -> None:
    wg, name = wireguard_go_node.devices, wireguard_go_node.iface
    k1, k2, k3, k4 = _pub(1), _pub(2), _pub(3), _pub(4)
    e1 = Endpoint(IP("192.0.2.1"), 51820)
    e2 = Endpoint(IP("2001:db8::2"), 51821)
    wg.configure(
        name,
        DeviceConfig(
            peers=(
                PeerConfig(
                    k1, endpoint=e1, persistent_keepalive=25, allowed_ips=(V4("10.1.0.0/24"),)
                ),
                PeerConfig(k2, endpoint=e2, allowed_ips=(V4("10.2.0.0/24"), V4("fd00:2::/64"))),
                PeerConfig(k3, allowed_ips=(V4("10.3.0.1/32"),)),
            )
        ),
    )
    peers = wg.device(name).peers
    assert set(peers) == {k1, k2, k3}
    assert (peers[k1].endpoint, peers[k1].persistent_keepalive) == (e1, 25)
    assert peers[k2].endpoint == e2
    assert peers[k2].allowed_ips == {V4("10.2.0.0/24"), V4("fd00:2::/64")}
    assert (peers[k3].endpoint, peers[k3].allowed_ips) == (None, {V4("10.3.0.1/32")})

    # `wg` reads the same device through the same socket: cross-check every field it shows.
    _, dump = _dump(wireguard_go_node)
    assert set(dump) == {k.to_base64() for k in (k1, k2, k3)}
    for key, peer in peers.items():
        line = dump[key.to_base64()]
        assert line[2] == (str(peer.endpoint) if peer.endpoint else "(none)")
        assert set(line[3].split(",")) == {str(c) for c in peer.allowed_ips}
        assert line[7] == (str(peer.persistent_keepalive) if peer.persistent_keepalive else "off")

    # update_only: changes a known peer, never creates one. Allowed IPs are added without replace.
    e1b = Endpoint(IP("192.0.2.11"), 51830)
    wg.configure(
        name,
        DeviceConfig(
            peers=(
                PeerConfig(k1, update_only=True, endpoint=e1b, allowed_ips=(V4("10.1.1.0/24"),)),
                PeerConfig(k4, update_only=True, endpoint=e1, allowed_ips=(V4("10.4.0.0/24"),)),
            )
        ),
    )
    peers = wg.device(name).peers
    assert k4 not in peers
    assert peers[k1].endpoint == e1b
    assert peers[k1].persistent_keepalive == 25  # not mentioned, kept
    assert peers[k1].allowed_ips == {V4("10.1.0.0/24"), V4("10.1.1.0/24")}

    # replace_allowed_ips replaces the set; remove drops a peer.
    wg.configure(
        name,
        DeviceConfig(
            peers=(
                PeerConfig(k1, replace_allowed_ips=True, allowed_ips=(V4("10.9.0.0/16"),)),
                PeerConfig(k2, remove=True),
                PeerConfig(k4, remove=True),  # unknown: not an error
            )
        ),
    )
    peers = wg.device(name).peers
    assert set(peers) == {k1, k3}
    assert peers[k1].allowed_ips == {V4("10.9.0.0/16")}

    # replace_peers: exactly the peers of the call remain.
    wg.configure(name, DeviceConfig(replace_peers=True, peers=(PeerConfig(k4, endpoint=e2),)))
    peers = wg.device(name).peers
    assert set(peers) == {k4}
    assert (peers[k4].endpoint, peers[k4].allowed_ips) == (e2, frozenset())
    assert set(_dump(wireguard_go_node)[1]) == {k4.to_base64()}


@integration
def test_a_rejected_line_is_a_kernel_error_and_earlier_lines_stay_applied(
    wireguard_go_node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshcrypt")
    wg, name = wireguard_go_node.devices, wireguard_go_node.iface
    private = PrivateKey.generate()
    k1, k2 = _pub(1), _pub(2)
    bad = Endpoint(IP("192.0.2.1"), 65536)  # not a port
    with pytest.raises(KernelError) as info:
        wg.configure(
            name,
            DeviceConfig(
                private_key=private,
                listen_port=51999,
                peers=(PeerConfig(k1, endpoint=bad, allowed_ips=(V4("10.1.0.0/24"),)),),
            ),
        )
    assert type(info.value) is KernelError
    assert info.value.errno == errno.EINVAL
    assert isinstance(info.value.__cause__, OSError)
    for text in (private.raw.hex(), private.to_base64()):
        assert text not in str(info.value)
        assert text not in caplog.text

    # Not atomic: the device settings and the peer itself were applied before the bad endpoint;
    # its allowed IP, after it, was not. This is why callers resync after any failure.
    dev = wg.device(name)
    assert (dev.private_key, dev.listen_port) == (private, 51999)
    assert dev.peers[k1].endpoint is None
    assert dev.peers[k1].allowed_ips == frozenset()

    # The client keeps working after the error.
    wg.configure(name, DeviceConfig(peers=(PeerConfig(k2),)))
    assert set(wg.device(name).peers) == {k1, k2}


@integration
def test_an_error_early_in_a_large_set_still_reports_its_errno(
    wireguard_go_node,
) -> None:
    # wireguard-go stops reading at the bad line and closes the connection while a large request is
    # still being sent; the client must read the errno it wrote instead of calling it a lost connection.
    wg, name = wireguard_go_node.devices, wireguard_go_node.iface
    bulk = _bulk_config(3000)
    bad = PeerConfig(_pub(1), endpoint=Endpoint(IP("192.0.2.1"), 70000))
    with pytest.raises(KernelError) as info:
        wg.configure(name, DeviceConfig(peers=(bad, *bulk.peers)))
    assert info.value.errno == errno.EINVAL
    assert set(wg.device(name).peers) == {_pub(1)}


@integration
def test_missing_device_in_a_node_is_not_found(wireguard_go_node) -> None:
    with pytest.raises(NotFound):
        wireguard_go_node.devices.device("wg-missing")
    with pytest.raises(NotFound):
        wireguard_go_node.devices.configure("wg-missing", DeviceConfig(fwmark=1))


@integration
def test_the_client_reconnects_once_after_wireguard_go_restarts(
    wireguard_go_node, caplog: pytest.LogCaptureFixture
) -> None:
    wg, name, sup = wireguard_go_node.devices, wireguard_go_node.iface, wireguard_go_node.supervisor
    wg.configure(name, DeviceConfig(listen_port=51901, peers=(PeerConfig(_pub(1)),)))
    assert set(wg.device(name).peers) == {_pub(1)}  # the connection is now kept open
    sup.stop(name)
    with pytest.raises(NotFound):
        wg.device(name)
    sup.ensure_running(name, mtu=0)
    # Same client object: the old connection is dead, a new one reaches the new (empty) device.
    wg.configure(name, DeviceConfig(listen_port=51902))
    dev = wg.device(name)
    assert (dev.listen_port, dev.peers) == (51902, {})

    # A kept connection that wireguard-go closed under us (it restarted between two calls): the
    # client reconnects once, transparently, and sees the new process's empty device.
    wg.configure(name, DeviceConfig(peers=(PeerConfig(_pub(2)),)))
    old_pid = sup.adopt(name)
    sup.stop(name)
    assert sup.ensure_running(name, mtu=0) != old_pid
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="meshcrypt"):
        assert wg.device(name).peers == {}
    assert "reconnecting" in caplog.text


@integration
def test_5000_peers_round_trip(wireguard_go_node) -> None:
    wg, name = wireguard_go_node.devices, wireguard_go_node.iface
    cfg = _bulk_config(5000)
    wg.configure(name, DeviceConfig(private_key=PrivateKey.generate()))

    encode = []
    for _ in range(3):
        t0 = time.perf_counter()
        encode_set(cfg)
        encode.append(time.perf_counter() - t0)

    configure_empty, configure_same, read = [], [], []
    for _ in range(3):
        wg.configure(name, DeviceConfig(replace_peers=True))
        t0 = time.perf_counter()
        wg.configure(name, cfg)
        configure_empty.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        wg.configure(name, DeviceConfig(peers=cfg.peers))
        configure_same.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        dev = wg.device(name)
        read.append(time.perf_counter() - t0)

    assert len(dev.peers) == 5000
    for pc in cfg.peers:
        peer = dev.peers[pc.public_key]
        assert (peer.endpoint, peer.allowed_ips) == (pc.endpoint, frozenset(pc.allowed_ips))
    dump_lines = wireguard_go_node.node.run("wg", "show", name, "dump").strip().split("\n")
    assert len(dump_lines) == 5001
    print(
        f"\n5000 peers (median of 3): encode {_median(encode) * 1000:.1f} ms, "
        f"configure from empty {_median(configure_empty) * 1000:.0f} ms, "
        f"re-apply same {_median(configure_same) * 1000:.0f} ms, "
        f"device() {_median(read) * 1000:.0f} ms"
    )


@integration
def test_handshake_time_and_counters_after_traffic_through_the_tunnel(node, wireguard_go) -> None:
    a, b = wireguard_go(node("a")), wireguard_go(node("b"))
    veth_pair(a.node, b.node, "10.99.0.1/24", "10.99.0.2/24")
    keys = {a: PrivateKey.generate(), b: PrivateKey.generate()}
    tunnel = {a: "192.168.222.1", b: "192.168.222.2"}
    underlay = {a: "10.99.0.1", b: "10.99.0.2"}
    for me, other in ((a, b), (b, a)):
        me.devices.configure(
            me.iface,
            DeviceConfig(
                private_key=keys[me],
                listen_port=51820,
                peers=(
                    PeerConfig(
                        keys[other].public_key(),
                        endpoint=Endpoint(IP(underlay[other]), 51820),
                        allowed_ips=(V4(f"{tunnel[other]}/32"),),
                    ),
                ),
            ),
        )
        me.node.run("ip", "addr", "add", f"{tunnel[me]}/32", "dev", me.iface)
        me.node.run("ip", "link", "set", me.iface, "up")
        me.node.run("ip", "route", "add", f"{tunnel[other]}/32", "dev", me.iface)
    before = time.time()
    a.node.run("ping", "-c", "2", "-W", "2", tunnel[b])
    peer = a.devices.device(a.iface).peers[keys[b].public_key()]
    assert before - 1 <= peer.last_handshake <= time.time()
    assert peer.last_handshake != int(peer.last_handshake)  # the nanoseconds were added
    assert peer.tx_bytes > 0 and peer.rx_bytes > 0
    back = b.devices.device(b.iface).peers[keys[a].public_key()]
    assert back.endpoint == Endpoint(IP(underlay[a]), 51820)  # learnt from the handshake
