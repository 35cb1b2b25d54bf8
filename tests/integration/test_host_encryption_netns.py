"""Host encryption's kernel side in throwaway namespaces: the nftables incoming mark, and MTU
auto-detection from real links.

The reverse-path test builds the situation the mark exists for: in namespace A, the route back to
B's address sits in the WireGuard table (behind `not fwmark M/M lookup 1`) and points at another
interface, with strict `rp_filter` and `src_valid_mark=1`. B's UDP to A's WireGuard port is dropped
until `NftIncomingMark.ensure()` marks it; UDP to any other port stays dropped.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from meshcrypt.adapters.netlink import RtNetlink
from meshcrypt.adapters.netns import open_in_netns
from meshcrypt.adapters.nft_mark import CHAIN_NAME, TABLE_NAME, NftIncomingMark
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.net import IPFamily
from meshcrypt.wireguard.mtu import MtuDetector

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (nftables) on PATH"),
]

MARK = 0x100000
WG_PORT, WG_PORT_V6, OTHER_PORT = 51820, 51821, 9999
A_IP, B_IP = "10.9.0.1", "10.9.0.2"


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def nft(netns: str, *args: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"nft {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def sysctl(netns: str, name: str, value: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{name}={value}"], check=True
    )


def wait_oper_up(nl: RtNetlink, name: str, timeout: float = 5.0) -> None:
    """A veth's carrier comes up a moment after `ip link set up` (the kernel's link watch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        link = nl.link_by_name(name)
        if link is not None and link.oper_up:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} did not come up within {timeout} s")


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], str]]:
    made: list[str] = []

    def make(tag: str) -> str:
        name = f"mc-he-{tag}-{secrets.token_hex(3)}"
        ip("netns", "add", name)
        made.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in reversed(made):
        ip("netns", "del", name)


# ---- the nftables table ---------------------------------------------------------------------------


def rule_handles(netns: str) -> list[int]:
    listing = json.loads(nft(netns, "-j", "list", "table", "inet", TABLE_NAME))
    return [item["rule"]["handle"] for item in listing["nftables"] if "rule" in item]


def test_ensure_is_idempotent_and_remove_cleans_up(make_netns):
    netns = make_netns("nft")
    table = NftIncomingMark(netns)
    assert table.listing() is None

    assert table.ensure([WG_PORT, WG_PORT_V6], MARK)
    text = nft(netns, "list", "table", "inet", TABLE_NAME)
    assert f"chain {CHAIN_NAME}" in text
    assert "type filter hook prerouting priority raw; policy accept;" in text
    assert (
        "udp dport { 51820, 51821 } fib daddr type local meta mark set meta mark | 0x00100000"
        in text
    )
    handles = rule_handles(netns)

    assert not table.ensure([WG_PORT_V6, WG_PORT], MARK)  # same set: nothing written
    assert nft(netns, "list", "table", "inet", TABLE_NAME) == text
    assert rule_handles(netns) == handles

    # Another agent instance (restart) rewrites once, atomically, to the same rules.
    assert NftIncomingMark(netns).ensure([WG_PORT, WG_PORT_V6], MARK)
    assert nft(netns, "list", "table", "inet", TABLE_NAME) == text

    assert table.ensure([WG_PORT], MARK)  # a changed port set is rewritten
    assert "udp dport 51820 fib" in nft(netns, "list", "table", "inet", TABLE_NAME)

    assert table.remove()
    assert table.listing() is None
    assert TABLE_NAME not in nft(netns, "list", "tables")
    assert not table.remove()


def test_a_tampered_table_is_rewritten(make_netns):
    netns = make_netns("tamper")
    table = NftIncomingMark(netns)
    table.ensure([WG_PORT], MARK)
    expected = nft(netns, "list", "table", "inet", TABLE_NAME)
    nft(netns, "flush", "chain", "inet", TABLE_NAME, CHAIN_NAME)
    assert table.ensure([WG_PORT], MARK)
    assert nft(netns, "list", "table", "inet", TABLE_NAME) == expected
    nft(netns, "delete", "table", "inet", TABLE_NAME)
    assert table.ensure([WG_PORT], MARK)
    assert nft(netns, "list", "table", "inet", TABLE_NAME) == expected


def test_no_ports_means_no_table(make_netns):
    netns = make_netns("empty")
    table = NftIncomingMark(netns)
    table.ensure([WG_PORT], MARK)
    assert table.ensure([], MARK)
    assert table.listing() is None


# ---- the mark at work: strict reverse-path filtering ---------------------------------------------


@dataclass(frozen=True)
class RpfPair:
    a: str
    b: str


@pytest.fixture
def rpf_pair(make_netns) -> RpfPair:
    """A <-> B over a veth; in A, B's address routes via another link in table 1 behind the
    inverted fwmark rule, with strict rp_filter and src_valid_mark (host encryption's setup)."""
    a, b = make_netns("a"), make_netns("b")
    ip("-n", a, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", b)
    ip("-n", a, "link", "add", "wg0", "type", "veth", "peer", "name", "wg0p")  # stands in for wg
    for link in ("a0", "wg0", "wg0p"):
        ip("-n", a, "link", "set", link, "up")
    ip("-n", b, "link", "set", "b0", "up")
    ip("-n", a, "addr", "add", f"{A_IP}/24", "dev", "a0")
    ip("-n", b, "addr", "add", f"{B_IP}/24", "dev", "b0")
    # No ARP in the picture: A's answers would go through the same reverse-path check.
    mac = json.loads(ip("-n", a, "-j", "link", "show", "a0"))[0]["address"]
    ip("-n", b, "neigh", "replace", A_IP, "lladdr", mac, "dev", "b0", "nud", "permanent")
    with RtNetlink(a) as nl_a, RtNetlink(b) as nl_b:
        wait_oper_up(nl_a, "a0")
        wait_oper_up(nl_b, "b0")
    pair = RpfPair(a, b)
    assert delivered(pair, WG_PORT)  # control: without the WireGuard table in the way
    ip("-n", a, "route", "add", f"{B_IP}/32", "dev", "wg0", "table", "1")
    ip("-n", a, "rule", "add", "not", "fwmark", f"{MARK:#x}/{MARK:#x}", "table", "1", "pref", "99")
    for name in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.a0.rp_filter"):
        sysctl(a, name, "1")
    sysctl(a, "net.ipv4.conf.all.src_valid_mark", "1")
    return pair


def delivered(pair: RpfPair, port: int) -> bool:
    """Whether one UDP datagram from B reaches a socket in A on `port`."""
    receiver = open_in_netns(pair.a, socket.AF_INET, socket.SOCK_DGRAM, 0)
    sender = open_in_netns(pair.b, socket.AF_INET, socket.SOCK_DGRAM, 0)
    with receiver, sender:
        receiver.bind((A_IP, port))
        receiver.settimeout(0.5)
        payload = secrets.token_bytes(8)
        sender.sendto(payload, (A_IP, port))
        try:
            return receiver.recv(64) == payload
        except TimeoutError:
            return False


def test_marked_wireguard_packets_pass_strict_reverse_path_filtering(rpf_pair):
    assert not delivered(rpf_pair, WG_PORT)  # the reverse path is the "WireGuard" table
    table = NftIncomingMark(rpf_pair.a)
    table.ensure([WG_PORT], MARK)
    assert delivered(rpf_pair, WG_PORT)
    assert not delivered(rpf_pair, OTHER_PORT)  # only WireGuard's port is marked
    table.remove()
    assert not delivered(rpf_pair, WG_PORT)


# ---- MTU auto-detection ---------------------------------------------------------------------------


def test_mtu_follows_the_host_links(make_netns):
    netns = make_netns("mtu")
    ip("-n", netns, "link", "add", "eth0", "mtu", "9000", "type", "veth", "peer", "name", "p0")
    ip("-n", netns, "link", "set", "p0", "mtu", "9000")
    ip("-n", netns, "link", "add", "eth1", "mtu", "1280", "type", "veth", "peer", "name", "p1")
    for link in ("eth0", "p0"):
        ip("-n", netns, "link", "set", link, "up")  # eth1 stays down: it must not count
    config = FelixConfig()
    with RtNetlink(netns) as nl:
        wait_oper_up(nl, "eth0")
        links = {link.name: link for link in nl.links()}
        assert set(links) == {"lo", "eth0", "p0", "eth1", "p1"}
        assert (links["eth0"].mtu, links["eth0"].oper_up) == (9000, True)
        assert links["eth1"].oper_up is False

        detector = MtuDetector(nl)
        assert detector.host.matched == ("eth0",)
        assert detector(config, IPFamily.V4) == 8940
        assert detector(config, IPFamily.V6) == 8920

        ip("-n", netns, "link", "set", "eth0", "mtu", "1500")
        assert detector.refresh()
        assert detector(config, IPFamily.V4) == 1440
        assert detector(config, IPFamily.V6) == 1420

        ip("-n", netns, "link", "set", "eth0", "down")
        assert detector.refresh()
        assert not detector.host.detected  # nothing up matches: the 1460 fallback
        assert detector(config, IPFamily.V4) == 1400
