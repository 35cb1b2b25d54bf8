"""meshcrypt.adapters.nft_mark without the kernel: the script, the spec and how nft's answers map
onto the error classes (the real table is tested in tests/integration/test_host_encryption_netns.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshcrypt.adapters.nft_mark import MarkSpec, NftIncomingMark, normalise, ports_to_mark, render
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.errors import KernelError, NotSupported


@pytest.mark.parametrize(
    ("v4", "v6", "host", "expected"),
    [
        (True, True, True, (51820, 51821)),
        (True, False, True, (51820,)),
        (False, True, True, (51821,)),
        (True, True, False, ()),
        (False, False, True, ()),
    ],
)
def test_ports_to_mark_follow_host_encryption_and_the_enabled_families(v4, v6, host, expected):
    config = FelixConfig(
        wireguard_enabled=v4, wireguard_enabled_v6=v6, wireguard_host_encryption_enabled=host
    )
    assert ports_to_mark(config) == expected


def test_spec_sorts_and_deduplicates_ports():
    assert MarkSpec.of([51821, 51820, 51821], 0x100000) == MarkSpec((51820, 51821), 0x100000)


@pytest.mark.parametrize(("ports", "mark"), [([0], 1), ([65536], 1), ([51820], 0), ([1], 2**32)])
def test_spec_rejects_bad_values(ports, mark):
    with pytest.raises(ValueError, match="invalid"):
        MarkSpec.of(ports, mark)


def test_render_replaces_the_table_in_one_transaction():
    script = render(MarkSpec((51820, 51821), 0x100000))
    lines = script.splitlines()
    assert lines[:3] == [
        "add table inet meshcrypt",
        "delete table inet meshcrypt",
        "table inet meshcrypt {",
    ]
    assert "type filter hook prerouting priority raw; policy accept;" in script
    assert (
        "udp dport { 51820, 51821 } fib daddr type local meta mark set meta mark | 0x00100000"
        in script
    )
    assert "udp dport 51820 fib" in render(MarkSpec((51820,), 0x100000))


def test_normalise_drops_metainfo_and_handles():
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "meshcrypt", "handle": 7}},
            {"rule": {"chain": "c", "handle": 3, "expr": [{"accept": None}]}},
        ]
    }
    assert normalise(listing) == [
        {"table": {"family": "inet", "name": "meshcrypt"}},
        {"rule": {"chain": "c", "expr": [{"accept": None}]}},
    ]
    with pytest.raises(ValueError, match="not nft JSON"):
        normalise([])


def fake_nft(tmp_path: Path, stderr: str, status: int = 1, stdout: str = "") -> str:
    script = tmp_path / "nft"
    script.write_text(
        f"#!/bin/sh\nprintf '%s' {json.dumps(stdout)}\n"
        f"printf '%s\\n' {json.dumps(stderr)} >&2\nexit {status}\n"
    )
    script.chmod(0o755)
    return str(script)


def test_a_missing_nft_binary_is_not_supported(tmp_path):
    table = NftIncomingMark(nft=str(tmp_path / "no-such-nft"))
    with pytest.raises(NotSupported, match="not found"):
        table.ensure([51820], 0x100000)


def test_a_kernel_without_nf_tables_is_not_supported(tmp_path):
    table = NftIncomingMark(
        nft=fake_nft(tmp_path, "Error: Could not process rule: Operation not supported")
    )
    with pytest.raises(NotSupported):
        table.listing()


def test_a_missing_table_lists_as_none_and_other_failures_raise(tmp_path):
    absent = NftIncomingMark(nft=fake_nft(tmp_path, "Error: No such file or directory"))
    assert absent.listing() is None
    assert not absent.remove()
    broken = NftIncomingMark(nft=fake_nft(tmp_path, "Error: syntax error"))
    with pytest.raises(KernelError, match="syntax error"):
        broken.listing()


def test_unexpected_output_is_an_error(tmp_path):
    table = NftIncomingMark(nft=fake_nft(tmp_path, "", status=0, stdout="not json"))
    with pytest.raises(KernelError, match="unexpected output"):
        table.listing()


def test_netns_and_prefix_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        NftIncomingMark("ns", prefix_cmd=["nsenter"])
