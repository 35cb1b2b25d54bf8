"""`GenlWireguard` against the real kernel module, inside a VM (run by `scripts/vm-run`).

Two namespaces joined by a veth each get a kernel WireGuard link (made through `RtNetlink`),
configured only through `GenlWireguard`; `wg show` is the independent witness of what the kernel
holds, and a ping through the tunnel proves the configuration works. The scale test sends hundreds of
peers in one `configure` (split over several messages) and reads them back from a multi-part dump.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from meshcrypt.adapters.netlink import RtNetlink
from meshcrypt.adapters.wireguard_genl import GenlWireguard, set_device_payloads
from meshcrypt.model.dataplane import DeviceConfig, Endpoint, PeerConfig
from meshcrypt.model.errors import NotFound, NotSupported
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import CIDR

from .vmnodes import WG_IFACE, VmNode

pytestmark = pytest.mark.vm

PORT = 51820
FWMARK = 0x100000


@dataclass
class WgNode:
    node: VmNode
    key: PrivateKey
    wg: GenlWireguard

    @property
    def public(self) -> Key:
        return self.key.public_key()


@pytest.fixture
def wg_pair(ns_pair: tuple[VmNode, VmNode]) -> Iterator[tuple[WgNode, WgNode]]:
    """Both namespaces with a kernel WireGuard link (up, tunnel address /24) and an adapter each."""
    made = []
    for node in ns_pair:
        with RtNetlink(netns=node.netns) as rtnl:
            rtnl.link_add_wireguard(WG_IFACE, 1420)
            link = rtnl.link_by_name(WG_IFACE)
            assert link is not None and link.kind == "wireguard"
            rtnl.link_set_up(link.index)
        node.run("ip", "addr", "add", f"{node.tunnel}/24", "dev", WG_IFACE)
        made.append(WgNode(node, PrivateKey.generate(), GenlWireguard(netns=node.netns)))
    a, b = made
    yield a, b
    for n in made:
        n.wg.close()


def peer_of(other: WgNode, keepalive: int | None = 25) -> PeerConfig:
    return PeerConfig(
        public_key=other.public,
        endpoint=Endpoint(other.node.underlay, PORT),
        persistent_keepalive=keepalive,
        replace_allowed_ips=True,
        allowed_ips=(ipaddress.ip_network(other.node.tunnel),),
    )


def connect(a: WgNode, b: WgNode) -> None:
    for me, other in ((a, b), (b, a)):
        me.wg.configure(
            WG_IFACE,
            DeviceConfig(
                private_key=me.key,
                listen_port=PORT,
                fwmark=FWMARK,
                replace_peers=True,
                peers=(peer_of(other),),
            ),
        )


def ping(a: WgNode, b: WgNode) -> None:
    a.node.run("ping", "-c", "2", "-i", "0.5", "-w", "30", str(b.node.tunnel))


def wg_dump(n: WgNode) -> tuple[list[str], dict[str, list[str]]]:
    """`wg show <if> dump`: the device line and the peer lines by public key."""
    lines = [line.split("\t") for line in n.node.run("wg", "show", WG_IFACE, "dump").splitlines()]
    return lines[0], {fields[0]: fields for fields in lines[1:]}


def test_two_namespaces_talk_through_a_tunnel_configured_over_genl(
    wg_pair: tuple[WgNode, WgNode],
) -> None:
    a, b = wg_pair
    start = time.monotonic()
    connect(a, b)
    configured = time.monotonic() - start

    device_line, peers = wg_dump(a)
    assert device_line == [
        a.key.clamped().to_base64(),
        a.public.to_base64(),
        str(PORT),
        hex(FWMARK),
    ]
    assert set(peers) == {b.public.to_base64()}
    fields = peers[b.public.to_base64()]
    assert fields[2:4] == [f"{b.node.underlay}:{PORT}", f"{b.node.tunnel}/32"]
    assert fields[7] == "25"

    start = time.monotonic()
    ping(a, b)
    pinged = time.monotonic() - start

    device = a.wg.device(WG_IFACE)
    assert device.private_key == a.key.clamped()
    assert device.public_key == a.public
    assert (device.listen_port, device.fwmark) == (PORT, FWMARK)
    peer = device.peers[b.public]
    assert peer.endpoint == Endpoint(b.node.underlay, PORT)
    assert peer.allowed_ips == {ipaddress.ip_network(b.node.tunnel)}
    assert peer.persistent_keepalive == 25
    assert peer.last_handshake > 0 and peer.rx_bytes > 0 and peer.tx_bytes > 0
    # Same interface name in both namespaces: each adapter sees its own.
    assert b.wg.device(WG_IFACE).public_key == b.public
    print(f"\n[vm] configure both ends {configured * 1000:.1f} ms, first ping {pinged:.2f} s")


def random_peers(count: int) -> list[PeerConfig]:
    base = int(ipaddress.IPv4Address("100.64.0.0"))
    return [
        PeerConfig(
            public_key=PrivateKey.generate().public_key(),
            endpoint=Endpoint(ipaddress.IPv4Address(base + 0x10000 + i), PORT),
            replace_allowed_ips=True,
            allowed_ips=(ipaddress.IPv4Network((base + i, 32)),),
        )
        for i in range(count)
    ]


def wide_peer(count: int, first: str, keepalive: int) -> PeerConfig:
    base = int(ipaddress.ip_address(first))
    family = ipaddress.IPv4Network if ":" not in first else ipaddress.IPv6Network
    bits = 32 if ":" not in first else 128
    return PeerConfig(
        public_key=PrivateKey.generate().public_key(),
        persistent_keepalive=keepalive,
        replace_allowed_ips=True,
        allowed_ips=tuple(family((base + i, bits)) for i in range(count)),
    )


def test_hundreds_of_peers_in_one_call_are_all_read_back(wg_pair: tuple[WgNode, WgNode]) -> None:
    a, b = wg_pair
    count = 300  # 5 SET_DEVICE messages and a multi-part dump; more peers only take longer
    connect(a, b)
    wide = wide_peer(300, "100.96.0.0", keepalive=10)
    # Too big for one message: its allowed IPs are split, REPLACE_ALLOWEDIPS on the first piece only.
    huge = wide_peer(3000, "fd00:65::", keepalive=0)
    peers = (peer_of(b), *random_peers(count), wide, huge)
    config = DeviceConfig(replace_peers=True, peers=peers)
    messages = len(set_device_payloads(WG_IFACE, config))
    assert messages > 2

    start = time.monotonic()
    a.wg.configure(WG_IFACE, config)
    configured = time.monotonic() - start
    start = time.monotonic()
    device = a.wg.device(WG_IFACE)
    read = time.monotonic() - start

    want: dict[Key, frozenset[CIDR]] = {p.public_key: frozenset(p.allowed_ips) for p in peers}
    assert {k: p.allowed_ips for k, p in device.peers.items()} == want
    assert device.peers[wide.public_key].persistent_keepalive == 10
    # The device settings of the earlier call are untouched by a peers-only call.
    assert (device.listen_port, device.fwmark, device.private_key) == (
        PORT,
        FWMARK,
        a.key.clamped(),
    )

    _, shown = wg_dump(a)
    assert set(shown) == {k.to_base64() for k in want}
    assert len(shown[huge.public_key.to_base64()][3].split(",")) == 3000
    ping(a, b)  # the real peer survived the replace

    # A second call: drop half the random peers, ask for an update-only peer that does not exist.
    gone = [p.public_key for p in peers[1 : 1 + count // 2]]
    ghost = PrivateKey.generate().public_key()
    a.wg.configure(
        WG_IFACE,
        DeviceConfig(
            peers=(
                *(PeerConfig(public_key=k, remove=True) for k in gone),
                PeerConfig(public_key=ghost, update_only=True, allowed_ips=peers[1].allowed_ips),
            )
        ),
    )
    after = a.wg.device(WG_IFACE)
    assert set(after.peers) == set(want) - set(gone)
    print(
        f"\n[vm] {len(peers)} peers / {sum(len(p.allowed_ips) for p in peers)} allowed IPs: "
        f"configure {configured * 1000:.0f} ms in {messages} messages, "
        f"device() {read * 1000:.0f} ms"
    )


def test_ipv6_endpoints_and_allowed_ips_round_trip(wg_pair: tuple[WgNode, WgNode]) -> None:
    a, _ = wg_pair
    peer = PeerConfig(
        public_key=PrivateKey.generate().public_key(),
        endpoint=Endpoint(ipaddress.IPv6Address("2001:db8::2"), 51821),
        persistent_keepalive=0,
        replace_allowed_ips=True,
        allowed_ips=(
            ipaddress.IPv6Network("fd00:65:1::/64"),
            ipaddress.IPv4Network("10.65.0.0/26"),
        ),
    )
    a.wg.configure(WG_IFACE, DeviceConfig(private_key=a.key, listen_port=51821, peers=(peer,)))
    device = a.wg.device(WG_IFACE)
    got = device.peers[peer.public_key]
    assert got.endpoint == peer.endpoint
    assert got.allowed_ips == frozenset(peer.allowed_ips)
    assert device.listen_port == 51821 and device.fwmark == 0
    _, shown = wg_dump(a)
    assert shown[peer.public_key.to_base64()][2] == "[2001:db8::2]:51821"


def test_errors_are_classified_and_carry_no_private_key(wg_pair: tuple[WgNode, WgNode]) -> None:
    a, _ = wg_pair
    secret = PrivateKey.generate()
    with pytest.raises(NotFound):
        a.wg.device("mc-absent0")
    with pytest.raises(NotFound) as caught:
        a.wg.configure("mc-absent0", DeviceConfig(private_key=secret, listen_port=1))
    assert secret.to_base64() not in str(caught.value)
    assert secret.to_hex() not in str(caught.value)
    # A link of another kind: the kernel answers EOPNOTSUPP.
    with pytest.raises(NotSupported):
        a.wg.device("eth0")
