"""`meshcrypt doctor`'s checks on a node programmed by the real manager (fake kernel), then broken."""

from __future__ import annotations

import dataclasses
import ipaddress
import json

import pytest

from meshcrypt.model.dataplane import Endpoint, Peer, RouteKey, Rule
from meshcrypt.model.net import IPFamily
from meshcrypt.model.resources import WorkloadEndpointResource
from meshcrypt.ops.cluster import InvalidResource
from meshcrypt.ops.doctor import Outcome, render_doctor
from tests.unit.ops.scenario import IFACE, Scenario, block, make_node, new_key, tunnel

V4 = IPFamily.V4


@pytest.fixture(params=list(IPFamily), ids=lambda f: f.label)
def s(request: pytest.FixtureRequest) -> Scenario:
    return Scenario(request.param)


def failed(report, family=None) -> dict[str, object]:
    return {c.id: c for c in report.checks if c.outcome is Outcome.FAIL and c.family == family}


def test_a_healthy_node_passes_every_check(s: Scenario) -> None:
    report = s.doctor()
    assert report.ok, render_doctor(report)
    assert report.exit_code == 0
    ids = [c.id for c in report.checks if c.family is s.family]
    assert ids == [
        "device",
        "public-key",
        "peers",
        "allowed-ips",
        "endpoints",
        "routes",
        "rule",
        "address",
        "mtu",
    ]
    other = IPFamily.V6 if s.family is V4 else V4
    assert report.check("disabled", other).outcome is Outcome.PASS
    peers = report.check("peers", s.family)
    assert "1 node reached unencrypted" in peers.summary
    assert any("c: no" in d and "public key" in d for d in peers.details)


def test_deleted_route_fails_routes_with_a_hint(s: Scenario) -> None:
    cidr = ipaddress.ip_network(block(s.family, 1))
    s.kernel.remove_route(RouteKey(1, cidr, s.family.default_route_metric))
    report = s.doctor()
    assert report.exit_code == 1
    assert set(failed(report, s.family)) == {"routes"}
    check = report.check("routes", s.family)
    assert check.details == (f"missing: {cidr} dev {IFACE[s.family]} (node b)",)
    assert "resync" in check.hint and "route show table 1" in check.hint


def test_route_of_the_wrong_kind_and_a_stray_route(s: Scenario) -> None:
    blk = ipaddress.ip_network(block(s.family, 1))
    metric = s.family.default_route_metric
    route = s.kernel.route(RouteKey(1, blk, metric))
    assert route is not None
    s.kernel.put_route(dataclasses.replace(route, kind=route.kind.THROW, ifindex=None))
    stray = ipaddress.ip_network("10.9.9.0/24" if s.family is V4 else "fd00:9::/64")
    s.kernel.put_route(dataclasses.replace(route, dst=stray, kind=route.kind.THROW, ifindex=None))
    details = s.doctor().check("routes", s.family).details
    assert f"{blk} is a throw route, expected {blk} dev {IFACE[s.family]} (node b)" in details
    assert f"unexpected: throw {stray}" in details


def test_changed_published_key_fails_public_key(s: Scenario) -> None:
    other = new_key()
    s.publish_in_datastore_only(make_node(s.family, 0, other))
    report = s.doctor()
    check = report.check("public-key", s.family)
    assert check.outcome is Outcome.FAIL
    assert other.to_base64() in check.summary
    assert s.published[-1].to_base64() in check.summary
    assert "republishes" in check.hint
    assert report.exit_code == 1


def test_no_published_key_and_unregistered_node(s: Scenario) -> None:
    s.publish_in_datastore_only(make_node(s.family, 0, None))
    assert "publishes no" in s.doctor().check("public-key", s.family).summary
    del s.cluster.nodes["a"]
    check = s.doctor().check("public-key", s.family)
    assert check.summary == "no Node a in etcd"
    assert "registers its Node" in check.hint


def test_unexpected_and_missing_peers(s: Scenario) -> None:
    stranger = new_key()
    ep = Endpoint(ipaddress.ip_address("10.1.1.1" if s.family is V4 else "fd00:1::1"), 51820)
    s.kernel.tamper_device(IFACE[s.family], peers=[Peer(stranger, ep)])
    check = s.doctor().check("peers", s.family)
    assert check.outcome is Outcome.FAIL
    assert f"missing peer for node b (key {s.b_key.to_base64()})" in check.details
    assert f"unexpected peer {stranger.to_base64()} (no node publishes this key)" in check.details


def test_wrong_allowed_ips_endpoint_and_keepalive(s: Scenario) -> None:
    peer = s.kernel.device(IFACE[s.family]).peers[s.b_key]
    extra = ipaddress.ip_network("10.200.0.0/16" if s.family is V4 else "fd00:200::/64")
    blk = ipaddress.ip_network(block(s.family, 1))
    wrong_ep = Endpoint(peer.endpoint.ip, 4000)  # type: ignore[union-attr]
    tampered = dataclasses.replace(
        peer,
        allowed_ips=frozenset({blk, extra}),
        endpoint=wrong_ep,
        persistent_keepalive=25,
    )
    s.kernel.tamper_device(IFACE[s.family], peers=[tampered])
    report = s.doctor()
    allowed = report.check("allowed-ips", s.family)
    assert allowed.outcome is Outcome.FAIL
    tunnel32 = ipaddress.ip_network(tunnel(s.family, 1))
    assert allowed.details == (f"node b: missing {tunnel32}", f"node b: unexpected {extra}")
    endpoints = report.check("endpoints", s.family).details
    assert f"node b: endpoint {wrong_ep}, expected {peer.endpoint}" in endpoints
    assert "node b: persistent keepalive 25s, expected 0s" in endpoints


def test_rule_missing_then_wrong(s: Scenario) -> None:
    rule = Rule(s.family, 99, 1, 0x100000, 0x100000, invert=True)
    s.kernel.remove_rule(rule)
    check = s.doctor().check("rule", s.family)
    assert check.outcome is Outcome.FAIL
    assert check.details == ("missing rule: 99: not from all fwmark 0x100000/0x100000 lookup 1",)
    s.kernel.insert_rule(dataclasses.replace(rule, priority=100, invert=False))
    check = s.doctor().check("rule", s.family)
    assert "unexpected rule: 100: from all fwmark 0x100000/0x100000 lookup 1" in check.details


def test_device_missing_or_down(s: Scenario) -> None:
    s.kernel.set_link_state(IFACE[s.family], admin_up=False, oper_up=False)
    check = s.doctor().check("device", s.family)
    assert check.summary == f"{IFACE[s.family]} is down"
    assert "ip link set" in check.hint
    s.kernel.delete_link(IFACE[s.family])
    report = s.doctor()
    check = report.check("device", s.family)
    assert check.summary == f"no device {IFACE[s.family]}"
    assert "meshcrypt agent" in check.hint
    assert report.check("peers", s.family).outcome is Outcome.SKIP
    assert report.check("mtu", s.family).outcome is Outcome.SKIP
    assert report.check("routes", s.family).outcome is Outcome.FAIL  # device routes are gone


def test_listening_port_and_fwmark(s: Scenario) -> None:
    s.kernel.tamper_device(IFACE[s.family], listen_port=1234, fwmark=0x4)
    check = s.doctor().check("device", s.family)
    assert check.outcome is Outcome.FAIL
    port = 51820 if s.family is V4 else 51821
    assert check.details == (
        f"listening port 1234, expected {port}",
        "fwmark 0x4, expected 0x100000",
    )


def test_mtu_larger_than_the_underlay_allows(s: Scenario) -> None:
    s.kernel.set_link_mtu(IFACE[s.family], 1480)
    check = s.doctor().check("mtu", s.family)
    limit = 1440 if s.family is V4 else 1420
    param = "WireguardMTU" if s.family is V4 else "WireguardMTUV6"
    assert check.outcome is Outcome.FAIL
    assert f"larger than {limit} (eth0 MTU 1500 −" in check.summary
    assert f"meshcrypt config set {param} {limit}" in check.hint


def test_mtu_differs_from_the_configured_one() -> None:
    s = Scenario(V4, wireguardMTU=1400)
    s.kernel.set_link_mtu("wireguard.cali", 1300)
    check = s.doctor().check("mtu", V4)
    assert check.summary == "wireguard.cali MTU 1300 differs from WireguardMTU 1400"


def test_mtu_smallest_matching_interface_counts() -> None:
    s = Scenario(V4)
    s.kernel.add_link("eth1", mtu=1400, up=True)
    s.kernel.add_link("docker0", mtu=1000, up=True)  # does not match MTUIfacePattern
    s.kernel.add_link("eth2", mtu=900, up=False)  # not running
    check = s.doctor().check("mtu", V4)
    assert check.outcome is Outcome.FAIL
    assert "larger than 1340 (eth1 MTU 1400 − 60)" in check.summary


def test_mtu_skipped_without_a_matching_interface() -> None:
    s = Scenario(V4, mtuIfacePattern="^nothing$")
    assert s.doctor().check("mtu", V4).outcome is Outcome.SKIP


def test_duplicate_keys_are_flagged(s: Scenario) -> None:
    dup = dataclasses.replace(make_node(s.family, 3, s.b_key), name="d")
    s.set_node(dup)
    s.sync()  # the agent drops b as a peer: nobody owns the key alone
    report = s.doctor()
    check = report.check("duplicate-keys")
    assert check.outcome is Outcome.FAIL
    assert check.details == (f"{s.family.label} key {s.b_key.to_base64()}: nodes b, d",)
    assert "never peers" in check.hint
    assert report.check("peers", s.family).outcome is Outcome.PASS  # agent and doctor agree
    assert "shared" in " ".join(report.check("peers", s.family).details)


def test_borrowed_workload_address_is_expected_on_its_node(s: Scenario) -> None:
    borrowed = ipaddress.ip_network(
        "10.65.2.9/32" if s.family is V4 else "fd00:65:2::9/128"
    )  # in c's block, used on b
    wep = WorkloadEndpointResource("ns/w", "b", (borrowed,))
    s.cluster.workloads[wep.key] = wep
    s.calc.on_workload(wep.key, wep)
    report = s.doctor()
    assert report.check("allowed-ips", s.family).outcome is Outcome.FAIL  # not applied yet
    s.sync()
    assert s.doctor().ok


def test_host_encryption_expects_host_addresses() -> None:
    s = Scenario(V4, wireguardHostEncryptionEnabled=True)
    report = s.doctor()
    assert report.ok, render_doctor(report)
    assert "host addresses" in report.check("allowed-ips", V4).summary
    peer = s.kernel.device("wireguard.cali").peers[s.b_key]
    assert ipaddress.ip_network("10.99.0.2/32") in peer.allowed_ips


def test_datastore_unreachable_skips_what_needs_it() -> None:
    s = Scenario(V4)
    report = s.doctor(cluster=False)
    assert report.check("datastore").outcome is Outcome.FAIL
    assert "--etcd-endpoints" in report.check("datastore").hint
    # The configuration is unknown; the device that exists is still checked, as far as it can be.
    device = report.check("device", V4)
    assert device.outcome is Outcome.PASS
    assert "not checked" in device.summary
    s.kernel.delete_link("wireguard.cali")
    assert s.doctor(cluster=False).check("device", V4).outcome is Outcome.SKIP
    assert report.check("routes", V4).outcome is Outcome.SKIP
    assert report.check("device", IPFamily.V6).outcome is Outcome.SKIP


def test_disabled_family_with_leftovers() -> None:
    s = Scenario(V4)
    s.spec["wireguardEnabled"] = False
    check = s.doctor().check("disabled", V4)
    assert check.outcome is Outcome.FAIL
    assert "device wireguard.cali exists" in check.details
    assert any(d.startswith("rule 99:") for d in check.details)


def test_invalid_resources_and_configuration() -> None:
    s = Scenario(V4, wireguardMTU=5)
    s.cluster.invalid.append(InvalidResource("/calico/x", "bad JSON"))
    report = s.doctor()
    assert report.check("resources").details == ("/calico/x: bad JSON",)
    config = report.check("config")
    assert config.outcome is Outcome.FAIL
    assert "WireguardMTU" in config.details[0]


def test_unreadable_userspace_device_names_the_socket() -> None:
    s = Scenario(V4)
    observations = s.observations()
    v4 = observations[0]
    link = dataclasses.replace(v4.link, kind="tun")  # type: ignore[type-var]
    broken = dataclasses.replace(v4, link=link, device=None, errors=("no wireguard-go device",))
    report = s.doctor(observations=[broken, observations[1]], socket_dir="/sock")
    check = report.check("device", V4)
    assert check.summary == "cannot read the WireGuard configuration of wireguard.cali"
    assert "/sock/wireguard.cali.sock" in check.hint and "nsenter" in check.hint
    assert report.check("peers", V4).outcome is Outcome.SKIP


def test_json_schema_and_text() -> None:
    s = Scenario(V4)
    s.kernel.remove_rule(Rule(V4, 99, 1, 0x100000, 0x100000, invert=True))
    report = s.doctor()
    doc = json.loads(json.dumps(report.to_json()))
    assert set(doc) == {"schema", "node", "ok", "counts", "checks"}
    assert doc["schema"] == "meshcrypt/doctor/v1"
    assert doc["ok"] is False
    assert doc["counts"]["fail"] == 1
    rule = next(c for c in doc["checks"] if c["id"] == "rule")
    assert set(rule) == {"id", "family", "status", "summary", "hint", "details"}
    assert rule["family"] == "IPv4" and rule["status"] == "fail"
    out = render_doctor(report)
    assert "FAIL  IPv4 rule" in out
    assert "hint: " in out
    assert out.rstrip().endswith("1 failed, 13 passed, 0 skipped")
