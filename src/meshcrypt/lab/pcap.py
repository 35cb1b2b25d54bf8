"""Read a pcap capture of an Ethernet link and sort its packets: WireGuard, plaintext pod traffic, other.

- *WireGuard*: UDP whose payload is a WireGuard message — type 1–4 followed by three zero bytes, with
  the length that type has (148 initiation, 92 response, 64 cookie reply, 32 + 16·n data). This
  holds on any port, so a changed `wireguardListeningPort` is still recognised.
- *plaintext pod traffic*: any other IP packet whose source or destination lies in a pod network
  (the IP pools): pod traffic that crossed the underlay unencrypted.
- *other*: the rest (ARP, neighbour discovery, etcd and node-to-node traffic without pod addresses).

Pure: bytes in, counts out.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from meshcrypt.model.net import CIDR, IPAddress

_ETHERNET = 1
_ETH_IPV4, _ETH_IPV6, _ETH_VLAN = 0x0800, 0x86DD, 0x8100
_UDP = 17
_PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}
_WG_TYPES = {1: "handshake initiation", 2: "handshake response", 3: "cookie reply", 4: "data"}
_WG_LENGTHS = {1: 148, 2: 92, 3: 64}


class PcapError(ValueError):
    """The file is not a pcap capture this reader understands."""


@dataclass
class Classification:
    wireguard: int = 0
    plaintext_pod: int = 0
    other: int = 0
    wireguard_kinds: Counter[str] = field(default_factory=Counter)
    #: Up to a few examples of plaintext pod packets: "10.65.0.0 → 10.65.0.64 ICMP".
    examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.wireguard + self.plaintext_pod + self.other


def packets(data: bytes) -> Iterator[bytes]:
    """The captured frames of a classic pcap file (either byte order, µs or ns stamps, Ethernet)."""
    if len(data) < 24:
        raise PcapError("shorter than a pcap header")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise PcapError("not a pcap file (pcapng is not supported)")
    (linktype,) = struct.unpack(order + "I", data[20:24])
    if linktype != _ETHERNET:
        raise PcapError(f"link type {linktype} is not Ethernet")
    offset = 24
    while offset + 16 <= len(data):
        caplen = struct.unpack(order + "I", data[offset + 8 : offset + 12])[0]
        offset += 16
        yield data[offset : offset + caplen]
        offset += caplen


def _ip_packet(frame: bytes) -> tuple[int, bytes] | None:
    """(IP version, IP packet) of an Ethernet frame, or None for non-IP frames."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack("!H", frame[12:14])[0]
    payload = frame[14:]
    if ethertype == _ETH_VLAN and len(frame) >= 18:
        ethertype = struct.unpack("!H", frame[16:18])[0]
        payload = frame[18:]
    if ethertype == _ETH_IPV4:
        return 4, payload
    if ethertype == _ETH_IPV6:
        return 6, payload
    return None


def _addresses_and_payload(
    version: int, packet: bytes
) -> tuple[IPAddress, IPAddress, int, bytes] | None:
    """Source, destination, protocol and transport payload (the L4 header included)."""
    if version == 4:
        if len(packet) < 20:
            return None
        header = (packet[0] & 0x0F) * 4
        src = ipaddress.IPv4Address(packet[12:16])
        dst = ipaddress.IPv4Address(packet[16:20])
        return src, dst, packet[9], packet[header:]
    if len(packet) < 40:
        return None
    src6 = ipaddress.IPv6Address(packet[8:24])
    dst6 = ipaddress.IPv6Address(packet[24:40])
    return src6, dst6, packet[6], packet[40:]  # extension headers: the protocol is reported as is


def wireguard_kind(udp: bytes) -> str | None:
    """The WireGuard message type of a UDP datagram (header included), or None."""
    if len(udp) < 8:
        return None
    payload = udp[8:]
    if len(payload) < 4 or payload[1:4] != b"\0\0\0":
        return None
    kind = payload[0]
    if kind in _WG_LENGTHS:
        return _WG_TYPES[kind] if len(payload) == _WG_LENGTHS[kind] else None
    if kind == 4 and len(payload) >= 32 and (len(payload) - 32) % 16 == 0:
        return _WG_TYPES[4]
    return None


def classify(data: bytes, pod_networks: Sequence[CIDR], max_examples: int = 5) -> Classification:
    result = Classification()
    for frame in packets(data):
        ip = _ip_packet(frame)
        parsed = None if ip is None else _addresses_and_payload(*ip)
        if parsed is None:
            result.other += 1
            continue
        src, dst, proto, transport = parsed
        kind = wireguard_kind(transport) if proto == _UDP else None
        if kind is not None:
            result.wireguard += 1
            result.wireguard_kinds[kind] += 1
        elif any(a in net for a in (src, dst) for net in pod_networks if a.version == net.version):
            result.plaintext_pod += 1
            example = f"{src} → {dst} {_PROTOCOLS.get(proto, f'protocol {proto}')}"
            if len(result.examples) < max_examples and example not in result.examples:
                result.examples.append(example)
        else:
            result.other += 1
    return result
