"""`meshcrypt status`'s report on a node programmed by the real manager (fake kernel)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from meshcrypt.model.net import IPFamily
from meshcrypt.ops.status import render_status
from tests.unit.ops.scenario import IFACE, NOW, Scenario, make_node

V4, V6 = IPFamily.V4, IPFamily.V6


@pytest.fixture(params=list(IPFamily), ids=lambda f: f.label)
def s(request: pytest.FixtureRequest) -> Scenario:
    return Scenario(request.param)


def test_peers_are_named_after_the_node_that_publishes_the_key(s: Scenario) -> None:
    s.kernel.record_traffic(
        IFACE[s.family], s.b_key, rx_bytes=2048, tx_bytes=100, handshake_at=NOW - 65
    )
    report = s.status()
    assert [f.family for f in report.families] == [s.family]
    fam = report.families[0]
    assert fam.enabled is True
    assert fam.device.present and fam.device.oper_up and fam.device.backend == "kernel"
    assert fam.device.public_key == s.published[-1].to_base64()
    [peer] = fam.peers
    assert peer.node == "b" and peer.nodes == ("b",)
    assert peer.public_key == s.b_key.to_base64()
    assert peer.rx_bytes == 2048 and peer.tx_bytes == 100
    assert peer.handshake_age == pytest.approx(65)
    out = render_status(report)
    assert "peer b" in out
    assert "1m 5s ago" in out
    assert "2.00 KiB received, 100 B sent" in out
    assert "99: not from all fwmark 0x100000/0x100000 lookup 1" in out


def test_routes_and_rule_of_our_table(s: Scenario) -> None:
    fam = s.status().families[0]
    kinds = {r.dst: (r.type, r.device) for r in fam.routes}
    assert len(kinds) == 5
    devices = [dst for dst, (kind, dev) in kinds.items() if kind == "device"]
    assert len(devices) == 2
    assert all(kinds[d][1] == IFACE[s.family] for d in devices)
    [rule] = fam.rules
    assert (rule.priority, rule.table, rule.mark, rule.invert) == (99, 1, 0x100000, True)


def test_the_private_key_never_appears(s: Scenario) -> None:
    private = s.kernel.device(IFACE[s.family]).private_key
    assert private is not None
    report = s.status()
    blob = json.dumps(report.to_json()) + render_status(report)
    assert private.to_base64() not in blob
    assert private.to_hex() not in blob


def test_etcd_unreachable_still_lists_the_peers(s: Scenario) -> None:
    report = s.status(cluster=False)
    assert report.datastore_error == "connection refused"
    assert any("unreachable" in w for w in report.warnings)
    fam = report.families[0]
    assert fam.enabled is None
    [peer] = fam.peers
    assert peer.node is None and peer.nodes == ()
    out = render_status(report)
    assert "warning: etcd is unreachable: connection refused" in out
    assert "peer (no node publishes this key)" in out


def test_a_key_published_by_two_nodes_lists_both() -> None:
    s = Scenario(V4)
    s.publish_in_datastore_only(dataclasses.replace(make_node(V4, 3, s.b_key), name="d"))
    [peer] = s.status().families[0].peers
    assert peer.node is None and peer.nodes == ("b", "d")
    assert "peer (key shared by b, d)" in render_status(s.status())


def test_disabled_families_are_left_out_unless_a_device_exists() -> None:
    s = Scenario(V4)
    assert [f.family for f in s.status().families] == [V4]
    s.spec["wireguardEnabled"] = False
    [fam] = s.status().families
    assert fam.enabled is False
    assert "[WireGuard disabled for this family]" in render_status(s.status())
    s.kernel.delete_link("wireguard.cali")
    report = s.status()
    assert report.families == ()
    assert "WireGuard is disabled for IPv4 and IPv6" in render_status(report)


def test_json_schema_is_stable() -> None:
    doc = json.loads(json.dumps(Scenario(V4).status().to_json()))
    assert set(doc) == {"schema", "node", "datastore", "warnings", "families"}
    assert doc["schema"] == "meshcrypt/status/v1"
    assert set(doc["datastore"]) == {"endpoints", "reachable", "error"}
    [fam] = doc["families"]
    assert set(fam) == {
        "family",
        "ip_version",
        "enabled",
        "device",
        "peers",
        "routing_table",
        "routes",
        "rules",
        "errors",
    }
    assert set(fam["device"]) == {
        "name",
        "present",
        "backend",
        "link_kind",
        "admin_up",
        "oper_up",
        "mtu",
        "listen_port",
        "fwmark",
        "public_key",
        "addresses",
    }
    assert set(fam["peers"][0]) == {
        "node",
        "nodes",
        "public_key",
        "endpoint",
        "allowed_ips",
        "latest_handshake",
        "latest_handshake_age_seconds",
        "rx_bytes",
        "tx_bytes",
        "persistent_keepalive_seconds",
    }
    assert fam["peers"][0]["latest_handshake"] is None
    assert set(fam["routes"][0]) == {"dst", "type", "device", "ifindex", "metric", "protocol"}
    assert set(fam["rules"][0]) == {"priority", "invert", "mark", "mask", "table", "text"}


def test_dual_stack_reports_both_families() -> None:
    s = Scenario(V4, wireguardEnabledV6=True)
    # The IPv6 family is enabled in the configuration but this scenario never programmed it.
    report = s.status()
    assert [f.family for f in report.families] == [V4, V6]
    v6 = report.families[1]
    assert not v6.device.present
    assert "wg-v6.cali, absent" in render_status(report)
