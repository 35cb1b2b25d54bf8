"""The generic-netlink WireGuard codec: encoding, splitting, dump merging (no kernel module needed)."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcrypt.adapters import wireguard_genl as wg
from meshcrypt.model.dataplane import DeviceConfig, Endpoint, PeerConfig
from meshcrypt.model.errors import NotFound, NotSupported
from meshcrypt.model.keys import Key, PrivateKey

# --- helpers: an independent encoder for what the kernel sends, written from linux/wireguard.h ----


def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    head = struct.pack("=HH", length, kind | (0x8000 if nested else 0))
    return head + payload + bytes((-length) % 4)


def key(n: int) -> Key:
    return Key(bytes([n % 256]) * 31 + bytes([n // 256]))


def v4(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def kernel_peer(pub: Key, ips: list[str], endpoint: bytes | None = None, rx: int = 0) -> bytes:
    allowed = []
    for text in ips:
        net = ipaddress.ip_network(text)
        fam = socket.AF_INET if net.version == 4 else socket.AF_INET6
        allowed.append(
            nla(
                0,
                nla(1, struct.pack("=H", fam))
                + nla(2, net.network_address.packed)
                + nla(3, bytes([net.prefixlen])),
                nested=True,
            )
        )
    body = nla(1, pub.raw)
    if endpoint is not None:
        body += nla(4, endpoint)
    body += nla(5, struct.pack("=H", 25))
    body += nla(6, struct.pack("=qq", 1_700_000_000, 500_000_000))
    body += nla(7, struct.pack("=Q", rx)) + nla(8, struct.pack("=Q", 2 * rx))
    body += nla(9, b"".join(allowed), nested=True)
    return nla(0, body, nested=True)


def genl(cmd: int, attrs: bytes) -> bytes:
    return struct.pack("=BBH", cmd, 1, 0) + attrs


def sample_config() -> DeviceConfig:
    return DeviceConfig(
        private_key=PrivateKey(bytes(range(32))),
        listen_port=51820,
        fwmark=0x100000,
        replace_peers=True,
        peers=(
            PeerConfig(
                public_key=key(1),
                endpoint=Endpoint(ipaddress.IPv4Address("192.0.2.10"), 51820),
                persistent_keepalive=25,
                replace_allowed_ips=True,
                allowed_ips=(v4("10.65.1.0/26"), v4("192.0.2.10/32")),
            ),
            PeerConfig(
                public_key=key(2),
                endpoint=Endpoint(ipaddress.IPv6Address("2001:db8::7"), 51821),
                persistent_keepalive=0,
                replace_allowed_ips=True,
                allowed_ips=(ipaddress.IPv6Network("fd00:65::/122"),),
            ),
            PeerConfig(public_key=key(3), remove=True),
            PeerConfig(
                public_key=key(4),
                update_only=True,
                allowed_ips=(v4("10.65.9.0/24"),),
            ),
            PeerConfig(public_key=key(5), replace_allowed_ips=True),  # clears its allowed IPs
        ),
    )


def frame_sizes(payloads: list[bytes]) -> list[int]:
    return [len(wg.frame(0x20, wg.NLM_F_REQUEST | wg.NLM_F_ACK, 1, p)) for p in payloads]


# --- encoding -----------------------------------------------------------------------------------


def test_round_trip_of_a_small_configuration() -> None:
    config = sample_config()
    payloads = wg.set_device_payloads("wireguard.cali", config)
    assert len(payloads) == 1
    assert wg.merge_set_payloads(payloads) == ("wireguard.cali", config)


def test_encoding_matches_the_kernel_layout() -> None:
    config = DeviceConfig(
        listen_port=51820,
        peers=(
            PeerConfig(
                public_key=key(7),
                endpoint=Endpoint(ipaddress.IPv4Address("192.0.2.1"), 51820),
                allowed_ips=(v4("10.0.0.0/8"),),
            ),
        ),
    )
    (payload,) = wg.set_device_payloads("wg0", config)
    sockaddr = struct.pack("=H", socket.AF_INET) + b"\xca\x6c" + bytes([192, 0, 2, 1]) + bytes(8)
    allowed = nla(
        0,
        nla(1, struct.pack("=H", socket.AF_INET)) + nla(2, bytes([10, 0, 0, 0])) + nla(3, b"\x08"),
        nested=True,
    )
    peer = nla(0, nla(1, key(7).raw) + nla(4, sockaddr) + nla(9, allowed, nested=True), nested=True)
    expected = genl(1, nla(2, b"wg0\0") + nla(6, struct.pack("=H", 51820)) + nla(8, peer, True))
    assert payload == expected


def test_the_ifname_is_checked() -> None:
    with pytest.raises(ValueError, match="interface name"):
        wg.set_device_payloads("a-name-that-is-too-long", DeviceConfig())


def many_peers(count: int, ips_each: int) -> tuple[PeerConfig, ...]:
    peers = []
    for i in range(count):
        base = 0x0A000000 + i * 256
        peers.append(
            PeerConfig(
                public_key=key(i + 10),
                endpoint=Endpoint(ipaddress.IPv4Address(0xC0000200 + i % 250), 51820),
                replace_allowed_ips=True,
                allowed_ips=tuple(
                    ipaddress.IPv4Network((base + j * 4, 30)) for j in range(ips_each)
                ),
            )
        )
    return tuple(peers)


def test_a_thousand_peers_are_split_by_size_with_the_flags_in_the_right_places() -> None:
    config = DeviceConfig(
        private_key=PrivateKey.generate(), listen_port=51820, replace_peers=True,
        peers=many_peers(1000, 3),
    )  # fmt: skip
    payloads = wg.set_device_payloads("wireguard.cali", config)

    assert len(payloads) > 1
    assert all(size <= wg.MAX_MESSAGE_SIZE for size in frame_sizes(payloads))
    decoded = [wg.decode_device(p) for p in payloads]
    assert all(m.command == wg.WG_CMD_SET_DEVICE and m.ifname == "wireguard.cali" for m in decoded)
    first, rest = decoded[0], decoded[1:]
    assert first.flags == wg.WGDEVICE_F_REPLACE_PEERS
    assert first.private_key == config.private_key and first.listen_port == 51820
    for later in rest:
        assert later.flags == 0
        assert later.private_key is None and later.listen_port is None and later.fwmark is None
    # Every peer fits a message, so none is split: each appears once, with its own flag.
    entries = [e for m in decoded for e in m.peers]
    assert [e.public_key for e in entries] == [p.public_key for p in config.peers]
    assert all(e.flags == wg.WGPEER_F_REPLACE_ALLOWEDIPS for e in entries)
    assert all(len(e.allowed_ips) == 3 for e in entries)
    assert wg.merge_set_payloads(payloads) == ("wireguard.cali", config)


def test_a_peer_too_large_for_one_message_is_split_with_replace_only_on_its_first_piece() -> None:
    big = PeerConfig(
        public_key=key(200),
        update_only=True,
        endpoint=Endpoint(ipaddress.IPv6Address("2001:db8::1"), 51821),
        persistent_keepalive=15,
        replace_allowed_ips=True,
        allowed_ips=tuple(ipaddress.IPv6Network((0xFD00_0000 << 96 | i, 128)) for i in range(3000)),
    )
    config = DeviceConfig(fwmark=0x100000, replace_peers=True, peers=(*many_peers(5, 2), big))
    payloads = wg.set_device_payloads("wg-v6.cali", config, max_message_size=16 * 1024)

    assert all(size <= 16 * 1024 for size in frame_sizes(payloads))
    pieces = [
        e for p in payloads for e in wg.decode_device(p).peers if e.public_key == big.public_key
    ]
    assert len(pieces) == len(payloads) >= 7  # 3000 × 40 bytes of allowed IPs in 16 KiB messages
    assert pieces[0].flags == wg.WGPEER_F_REPLACE_ALLOWEDIPS | wg.WGPEER_F_UPDATE_ONLY
    assert pieces[0].endpoint == big.endpoint and pieces[0].persistent_keepalive == 15
    for later in pieces[1:]:
        assert later.flags == wg.WGPEER_F_UPDATE_ONLY
        assert later.endpoint is None and later.persistent_keepalive is None
    assert sum(len(p.allowed_ips) for p in pieces) == 3000
    assert wg.merge_set_payloads(payloads) == ("wg-v6.cali", config)


@st.composite
def configs(draw: st.DrawFn) -> DeviceConfig:
    count = draw(st.integers(0, 40))
    peers = []
    for i in range(count):
        n_ips = draw(st.integers(0, 80))
        ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
            ipaddress.IPv4Network((0x0A000000 + (i << 12) + j, 32)) for j in range(n_ips)
        ]
        if draw(st.booleans()):
            ips.append(ipaddress.IPv6Network((0xFD00 << 112 | i, 128)))
        peers.append(
            PeerConfig(
                public_key=key(i),
                remove=draw(st.booleans()),
                update_only=draw(st.booleans()),
                endpoint=draw(
                    st.none() | st.just(Endpoint(ipaddress.IPv4Address("192.0.2.5"), 1 + i))
                ),
                persistent_keepalive=draw(st.none() | st.integers(0, 65535)),
                replace_allowed_ips=draw(st.booleans()),
                allowed_ips=tuple(ips),
            )
        )
    return DeviceConfig(
        private_key=draw(st.none() | st.just(PrivateKey(bytes([9]) * 32))),
        listen_port=draw(st.none() | st.integers(0, 65535)),
        fwmark=draw(st.none() | st.integers(0, 2**32 - 1)),
        replace_peers=draw(st.booleans()),
        peers=tuple(peers),
    )


@given(config=configs(), limit=st.integers(512, 8192))
def test_any_configuration_survives_any_message_limit(config: DeviceConfig, limit: int) -> None:
    payloads = wg.set_device_payloads("wg0", config, max_message_size=limit)
    assert all(size <= limit for size in frame_sizes(payloads))
    assert wg.merge_set_payloads(payloads) == ("wg0", config)
    decoded = [wg.decode_device(p) for p in payloads]
    assert all(m.flags == 0 for m in decoded[1:])
    seen: set[Key] = set()
    for entry in (e for m in decoded for e in m.peers):
        if entry.public_key in seen:
            assert not entry.flags & wg.WGPEER_F_REPLACE_ALLOWEDIPS
        seen.add(entry.public_key)


# --- decoding dumps -----------------------------------------------------------------------------


def test_a_dump_that_splits_a_peer_across_two_messages_is_merged_by_key() -> None:
    private = PrivateKey(bytes(range(1, 33)))
    sockaddr6 = struct.pack("=H2sI16sI", socket.AF_INET6, b"\xca\x6d", 0, bytes(15) + b"\x01", 0)
    first = genl(
        0,
        nla(6, struct.pack("=H", 51820))
        + nla(7, struct.pack("=I", 0x100000))
        + nla(1, struct.pack("=I", 7))
        + nla(2, b"wireguard.cali\0")
        + nla(3, private.raw)
        + nla(4, private.public_key().raw)
        + nla(
            8,
            kernel_peer(key(1), ["10.65.0.0/26"])
            + kernel_peer(key(2), ["10.65.1.0/26", "10.65.2.0/26"], sockaddr6, rx=100),
            nested=True,
        ),
    )
    second = genl(
        0,
        nla(1, struct.pack("=I", 7))
        + nla(2, b"wireguard.cali\0")
        + nla(
            8,
            kernel_peer(key(2), ["10.65.3.0/26", "fd00::/64"])
            + kernel_peer(key(3), ["10.65.4.0/26"]),
            nested=True,
        ),
    )
    datagram = wg.frame(0x20, wg.NLM_F_MULTI, 5, first) + wg.frame(0x20, wg.NLM_F_MULTI, 5, second)
    messages = [wg.decode_device(m.payload) for m in wg.parse_messages(datagram)]
    device = wg.merge_dump("wireguard.cali", messages)

    assert device.private_key == private
    assert device.public_key == private.public_key()
    assert (device.listen_port, device.fwmark) == (51820, 0x100000)
    assert set(device.peers) == {key(1), key(2), key(3)}
    split = device.peers[key(2)]
    assert split.allowed_ips == {
        v4("10.65.1.0/26"),
        v4("10.65.2.0/26"),
        v4("10.65.3.0/26"),
        ipaddress.IPv6Network("fd00::/64"),
    }
    assert split.endpoint == Endpoint(ipaddress.IPv6Address("::1"), 51821)
    assert (split.rx_bytes, split.tx_bytes, split.persistent_keepalive) == (100, 200, 25)
    assert split.last_handshake == pytest.approx(1_700_000_000.5)
    assert device.peers[key(1)].endpoint is None


def test_a_device_without_keys_reads_as_none() -> None:
    payload = genl(0, nla(2, b"wg0\0") + nla(6, struct.pack("=H", 0)))
    device = wg.merge_dump("wg0", [wg.decode_device(payload)])
    assert device.private_key is None and device.public_key is None and device.peers == {}


def test_an_extended_ack_error_text_is_read() -> None:
    echoed = struct.pack("=IHHII", 16, 0x20, 5, 9, 0)
    payload = struct.pack("=i", -22) + echoed + nla(1, b"bad attribute\0")
    msg = wg.NetlinkMessage(wg.NLMSG_ERROR, wg.NLM_F_CAPPED | wg.NLM_F_ACK_TLVS, 9, payload)
    assert wg.decode_error(msg) == (-22, "bad attribute")


def test_malformed_attributes_are_rejected() -> None:
    with pytest.raises(ValueError, match="malformed"):
        list(wg.iter_attrs(struct.pack("=HH", 40, 1) + bytes(8)))


# --- the socket adapter on a kernel without (or with) the module --------------------------------


def _module_available() -> bool:
    sock = wg.GenlWireguard()
    try:
        sock.device("mc-absent0")
    except NotSupported:
        return False
    except NotFound:
        return True
    finally:
        sock.close()
    return True


def test_the_adapter_reports_a_missing_module_or_a_missing_device() -> None:
    expected = NotFound if _module_available() else NotSupported
    adapter = wg.GenlWireguard()
    try:
        with pytest.raises(expected):
            adapter.device("mc-absent0")
        with pytest.raises(expected):
            adapter.configure("mc-absent0", DeviceConfig(private_key=PrivateKey.generate()))
    finally:
        adapter.close()


def test_an_unknown_namespace_is_not_found() -> None:
    with pytest.raises(NotFound):
        wg.GenlWireguard(netns=f"mc-absent-{uuid.uuid4().hex[:8]}")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and ip(8)")
def test_the_socket_is_opened_in_the_namespace_and_the_thread_comes_back() -> None:
    name = f"mc-genl-{uuid.uuid4().hex[:8]}"
    home = os.stat("/proc/thread-self/ns/net").st_ino
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        adapter = wg.GenlWireguard(netns=name)
        try:
            assert os.stat("/proc/thread-self/ns/net").st_ino == home
            # SIOCGSKNS hands back the namespace a socket lives in.
            ns_fd = fcntl.ioctl(adapter._sock.fileno(), 0x894C, 0)
            try:
                assert os.fstat(ns_fd).st_ino == os.stat(f"/run/netns/{name}").st_ino != home
            finally:
                os.close(ns_fd)
            with pytest.raises((NotFound, NotSupported)):
                adapter.device("mc-absent0")
        finally:
            adapter.close()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
