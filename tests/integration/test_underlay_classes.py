"""The test clusters' sorting of captured underlay packets (`cluster.classify_underlay`)."""

from __future__ import annotations

import pytest

from .cluster import classify_underlay

ETCD = "192.168.100.1"


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("1.0 IP 192.168.100.2.51820 > 192.168.100.3.51820: UDP, length 148", "wireguard"),
        ("1.0 IP 192.168.100.2.40000 > 192.168.100.1.2379: Flags [P.], length 90", "etcd"),
        ("1.0 ARP, Request who-has 192.168.100.3 tell 192.168.100.2, length 28", "control"),
        ("1.0 IP 0.0.0.0 > 224.0.0.22: igmp v3 report, 1 group record(s)", "control"),
        ("1.0 IP6 fe80::1 > ff02::2: ICMP6, router solicitation, length 16", "control"),
        ("1.0 IP 10.65.0.1 > 10.65.0.65: ICMP echo request, id 1, seq 1, length 64", "other"),
        ("1.0 IP 192.168.100.2.40000 > 192.168.100.3.80: Flags [S], length 0", "other"),
    ],
)
def test_each_packet_lands_in_its_class(line: str, kind: str) -> None:
    found = classify_underlay([line], [ETCD])
    assert found[kind] == [line]
    assert sum(len(lines) for lines in found.values()) == 1
