"""ClusterView: datastore keys routed to the calculator; invalid values absent and logged once;
FelixConfiguration layers resolved under the environment."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from meshcrypt.agent.cluster import ClusterView
from meshcrypt.calc.calculator import Calculator
from meshcrypt.datastore import layout
from meshcrypt.model.messages import (
    DataplaneMessage,
    HostMetadataRemove,
    RouteRemove,
    RouteUpdate,
    WireguardEndpointRemove,
    WireguardEndpointUpdate,
)
from meshcrypt.model.resources import (
    IPAMBlockResource,
    IPPoolResource,
    NodeResource,
    WorkloadEndpointResource,
)
from tests.unit.agent.helpers import (
    block_doc,
    block_key,
    felix_doc,
    kv,
    new_key,
    node_doc,
    pool_doc,
    wep_doc,
)

ME = "n1"
NODE_B = layout.node_key("b")
POOL = layout.ip_pool_key("pool-a")
BLOCK = block_key("10.65.1.0/26")
WEP = layout.workload_endpoint_key("ns", "pod-1")
DEFAULT = layout.felix_configuration_key("default")
MINE = layout.felix_configuration_key(f"node.{ME}")
OTHERS = layout.felix_configuration_key("node.n2")


class RecordingCalculator(Calculator):
    """The real calculator, recording every input it is given."""

    def __init__(self, hostname: str) -> None:
        super().__init__(hostname)
        self.calls: list[tuple[str, str, object]] = []

    def on_node(self, name: str, node: NodeResource | None) -> None:
        self.calls.append(("node", name, node))
        super().on_node(name, node)

    def on_pool(self, name: str, pool: IPPoolResource | None) -> None:
        self.calls.append(("pool", name, pool))
        super().on_pool(name, pool)

    def on_block(self, cidr_key: str, block: IPAMBlockResource | None) -> None:
        self.calls.append(("block", cidr_key, block))
        super().on_block(cidr_key, block)

    def on_workload(self, key: str, wep: WorkloadEndpointResource | None) -> None:
        self.calls.append(("workload", key, wep))
        super().on_workload(key, wep)

    def take(self) -> list[tuple[str, str, object]]:
        calls, self.calls = self.calls, []
        return calls


def view(env: dict[str, object] | None = None) -> tuple[ClusterView, RecordingCalculator]:
    calc = RecordingCalculator(ME)
    return ClusterView(ME, env or {}, calc), calc


def config_changed(cv: ClusterView) -> bool:
    """Read and clear the flag, as the agent does."""
    changed, cv.config_changed = cv.config_changed, False
    return changed


def own_node_changed(cv: ClusterView) -> bool:
    changed, cv.own_node_changed = cv.own_node_changed, False
    return changed


def own_node(cv: ClusterView) -> NodeResource | None:
    return cv.own_node  # read afresh: mypy would keep an earlier narrowing of the attribute


def endpoints(messages: list[DataplaneMessage]) -> dict[str, str]:
    return {m.hostname: m.public_key for m in messages if isinstance(m, WireguardEndpointUpdate)}


def skip_lines(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"Skipping {key} ")]


# ---- routing -------------------------------------------------------------------------------------


def test_each_resource_kind_reaches_the_calculator() -> None:
    cv, calc = view()
    key_b = new_key()
    cv.upsert(kv(NODE_B, node_doc("b", "192.168.0.2/24", key=key_b), 2))
    cv.upsert(kv(POOL, pool_doc("pool-a", "10.65.0.0/16"), 3))
    cv.upsert(kv(BLOCK, block_doc("10.65.1.0/26", "b"), 4))
    cv.upsert(kv(WEP, wep_doc("ns", "pod-1", "b", "10.66.0.5/32"), 5))

    node_b = NodeResource(
        "b", ipv4_address=ipaddress.IPv4Interface("192.168.0.2/24"), public_key=key_b
    )
    pool = IPPoolResource("pool-a", ipaddress.ip_network("10.65.0.0/16"), 26)
    block = IPAMBlockResource(ipaddress.ip_network("10.65.1.0/26"), "b")
    wep = WorkloadEndpointResource("ns/pod-1", "b", (ipaddress.ip_network("10.66.0.5/32"),))
    assert calc.take() == [
        ("node", "b", node_b),
        ("pool", "pool-a", pool),
        ("block", "10.65.1.0/26", block),
        ("workload", "ns/pod-1", wep),
    ]
    assert cv.pools == {"pool-a": pool}
    assert cv.pools_changed
    assert cv.own_node is None and not own_node_changed(cv)

    messages = calc.flush()
    assert endpoints(messages) == {"b": key_b.to_base64()}
    routes = {m.dst: m.dst_node_name for m in messages if isinstance(m, RouteUpdate)}
    assert routes == {"10.65.1.0/26": "b", "10.66.0.5/32": "b", "192.168.0.2/32": "b"}

    for key in (WEP, BLOCK, POOL, NODE_B):
        cv.delete(key)
    assert calc.take() == [
        ("workload", "ns/pod-1", None),
        ("block", "10.65.1.0/26", None),
        ("pool", "pool-a", None),
        ("node", "b", None),
    ]
    assert cv.pools == {}
    removed = calc.flush()
    assert WireguardEndpointRemove("b") in removed and HostMetadataRemove("b") in removed
    assert {m.dst for m in removed if isinstance(m, RouteRemove)} == set(routes)


def test_own_node_is_kept_and_flagged() -> None:
    cv, _ = view()
    config_changed(cv)
    cv.upsert(kv(layout.node_key(ME), node_doc(ME, "192.168.0.1/24"), 2))
    assert cv.own_node == NodeResource(ME, ipv4_address=ipaddress.IPv4Interface("192.168.0.1/24"))
    assert own_node_changed(cv)
    # The same value again (a re-list) is no change.
    cv.upsert(kv(layout.node_key(ME), node_doc(ME, "192.168.0.1/24"), 2))
    assert not own_node_changed(cv)
    cv.delete(layout.node_key(ME))
    assert own_node_changed(cv)
    assert own_node(cv) is None
    assert not config_changed(cv)


def test_keys_outside_the_layout_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    cv, calc = view()
    for key in (
        "/calico/resources/v3/projectcalico.org/nodes/",  # no name
        "/calico/ipam/v2/assignment/ipv4/block/10.65.1.1-26",  # host bits set: not a block key
        "/calico/resources/v3/projectcalico.org/networkpolicies/default/p",
    ):
        cv.upsert(kv(key, "{not json", 7))
        cv.delete(key)
    assert calc.take() == []
    assert cv.invalid_keys == {}
    assert not caplog.records


# ---- invalid values ------------------------------------------------------------------------------

BAD_VALUES = {
    "bad JSON": "{not json",
    "bad public key": node_doc("b", "192.168.0.2/24", key="not-a-key"),
    "bad address": node_doc("b", "192.168.0.300/24"),
    "wrong family": node_doc("b", "fd00::2/64"),
    "name differs from the key": node_doc("c", "192.168.0.2/24"),
}


@pytest.mark.parametrize("bad", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_a_node_turning_invalid_stops_being_a_peer(
    bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshcrypt.agent.cluster")
    cv, calc = view()
    key_b = new_key()
    good = node_doc("b", "192.168.0.2/24", key=key_b)
    cv.upsert(kv(NODE_B, good, 5))
    cv.upsert(kv(BLOCK, block_doc("10.65.1.0/26", "b"), 6))
    assert endpoints(calc.flush()) == {"b": key_b.to_base64()}

    cv.upsert(kv(NODE_B, bad, 7))
    assert calc.calls[-1] == ("node", "b", None)
    messages = calc.flush()
    assert WireguardEndpointRemove("b") in messages
    assert HostMetadataRemove("b") in messages
    assert cv.invalid_keys == {NODE_B: 7}
    lines = skip_lines(caplog, NODE_B)
    assert len(lines) == 1 and "(revision 7)" in lines[0]

    # The same revision again (a re-list, a repeated event): absent still, not logged again.
    cv.upsert(kv(NODE_B, bad, 7))
    assert calc.flush() == []
    assert len(skip_lines(caplog, NODE_B)) == 1

    # A new invalid revision is logged once more.
    cv.upsert(kv(NODE_B, "[]", 8))
    assert cv.invalid_keys == {NODE_B: 8}
    assert len(skip_lines(caplog, NODE_B)) == 2

    # Valid again: logged as recovered, and b is a peer again.
    cv.upsert(kv(NODE_B, good, 9))
    assert cv.invalid_keys == {}
    assert [r.getMessage() for r in caplog.records].count(f"{NODE_B} is valid again") == 1
    assert endpoints(calc.flush()) == {"b": key_b.to_base64()}


@pytest.mark.parametrize(
    ("key", "good", "bad", "kind", "name"),
    [
        (
            POOL,
            pool_doc("pool-a", "10.65.0.0/16"),
            pool_doc("pool-a", "10.65.0.0/99"),
            "pool",
            "pool-a",
        ),
        (
            BLOCK,
            block_doc("10.65.1.0/26", "b"),
            {**block_doc("10.65.1.0/26", "b"), "cidr": "10.65.1.0/99"},
            "block",
            "10.65.1.0/26",
        ),
        (
            WEP,
            wep_doc("ns", "pod-1", "b", "10.66.0.5/32"),
            wep_doc("ns", "pod-1", "b", "10.66.0.0/24"),
            "workload",
            "ns/pod-1",
        ),
    ],
    ids=["pool", "block", "workload"],
)
def test_other_kinds_turning_invalid_are_removed(
    key: str,
    good: object,
    bad: object,
    kind: str,
    name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cv, calc = view()
    cv.upsert(kv(key, good, 3))
    assert calc.take()[-1][:2] == (kind, name)
    cv.upsert(kv(key, bad, 4))
    cv.upsert(kv(key, bad, 4))
    assert calc.take() == [(kind, name, None), (kind, name, None)]
    assert len(skip_lines(caplog, key)) == 1
    assert cv.invalid_keys == {key: 4}
    if kind == "pool":
        assert cv.pools == {}
    # Deleting an invalid key forgets it.
    cv.delete(key)
    assert cv.invalid_keys == {}


def test_own_node_turning_invalid_reads_as_absent() -> None:
    cv, _ = view()
    cv.upsert(kv(layout.node_key(ME), node_doc(ME, "192.168.0.1/24"), 2))
    own_node_changed(cv)
    cv.upsert(kv(layout.node_key(ME), node_doc(ME, "192.168.0.1/24", key="garbage"), 3))
    assert cv.own_node is None
    assert own_node_changed(cv)


# ---- FelixConfiguration --------------------------------------------------------------------------


def test_felix_configuration_precedence() -> None:
    cv, _ = view(env={"wireguard_listening_port": 3333})
    assert config_changed(cv)  # the first look always builds the configuration
    cv.upsert(
        kv(
            DEFAULT,
            felix_doc(
                "default",
                wireguardEnabled=True,
                wireguardListeningPort=1111,
                wireguardMTU=1400,
                wireguardKeepAlive="7s",
            ),
            2,
        )
    )
    assert config_changed(cv)
    cv.upsert(kv(MINE, felix_doc(f"node.{ME}", wireguardListeningPort=2222, wireguardMTU=1300), 3))
    assert config_changed(cv)
    config = cv.felix_config()
    assert config.wireguard_enabled  # default only
    assert config.wireguard_persistent_keepalive == 7.0  # default only
    assert config.wireguard_mtu == 1300  # node.<name> over default
    assert config.wireguard_listening_port == 3333  # environment over both

    cv.env_layer = {}
    assert cv.felix_config().wireguard_listening_port == 2222
    config_changed(cv)
    cv.delete(MINE)
    assert config_changed(cv)
    config = cv.felix_config()
    assert (config.wireguard_listening_port, config.wireguard_mtu) == (1111, 1400)
    config_changed(cv)
    cv.delete(DEFAULT)
    assert config_changed(cv)
    assert cv.felix_config().wireguard_listening_port == 51820
    assert not cv.felix_config().wireguard_enabled


def test_an_unchanged_layer_is_no_change() -> None:
    cv, _ = view()
    cv.upsert(kv(DEFAULT, felix_doc("default", wireguardEnabled=True), 2))
    config_changed(cv)
    # A new revision with the same parameters (an unknown field changed): nothing to rebuild.
    cv.upsert(
        kv(DEFAULT, felix_doc("default", wireguardEnabled=True, logSeverityScreen="Debug"), 3)
    )
    assert not config_changed(cv)


def test_another_nodes_felix_configuration_is_ignored() -> None:
    cv, calc = view()
    cv.upsert(kv(DEFAULT, felix_doc("default", wireguardEnabled=True), 2))
    config_changed(cv)
    cv.upsert(kv(OTHERS, felix_doc("node.n2", wireguardEnabled=False, wireguardMTU=1280), 3))
    assert not config_changed(cv)
    assert cv.felix_config().wireguard_enabled
    assert cv.felix_config().wireguard_mtu == 0
    cv.delete(OTHERS)
    assert not config_changed(cv)
    assert calc.take() == []


def test_a_bad_field_is_logged_once_and_the_others_apply(caplog: pytest.LogCaptureFixture) -> None:
    cv, _ = view()
    doc = felix_doc("default", wireguardEnabled=True, wireguardListeningPort="x", wireguardMTU=1400)
    cv.upsert(kv(DEFAULT, doc, 4))
    cv.upsert(kv(DEFAULT, doc, 4))
    config = cv.felix_config()
    assert config.wireguard_enabled and config.wireguard_mtu == 1400
    assert config.wireguard_listening_port == 51820
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 1
    assert lines[0].startswith(f"Ignoring a field of {DEFAULT} (revision 4)")
    assert "WireguardListeningPort" in lines[0]

    # A new revision still carrying the bad field is logged again; a fixed one clears it.
    cv.upsert(kv(DEFAULT, {**doc, "metadata": {"name": "default", "labels": {"a": "b"}}}, 5))
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2
    fixed = felix_doc("default", wireguardEnabled=True, wireguardListeningPort=5555)
    cv.upsert(kv(DEFAULT, fixed, 6))
    assert cv.felix_config().wireguard_listening_port == 5555
    assert cv.invalid_keys == {}
    # Deleting a resource with a bad field forgets the field too.
    cv.upsert(kv(DEFAULT, doc, 7))
    assert list(cv.invalid_keys) == [f"{DEFAULT}#WireguardListeningPort"]
    cv.delete(DEFAULT)
    assert cv.invalid_keys == {}


def test_an_invalid_felix_configuration_is_absent(caplog: pytest.LogCaptureFixture) -> None:
    cv, _ = view()
    cv.upsert(kv(MINE, felix_doc(f"node.{ME}", wireguardEnabled=True), 2))
    assert cv.felix_config().wireguard_enabled
    config_changed(cv)
    cv.upsert(kv(MINE, "{not json", 3))
    assert config_changed(cv)
    assert not cv.felix_config().wireguard_enabled
    assert len(skip_lines(caplog, MINE)) == 1
    cv.upsert(kv(MINE, felix_doc(f"node.{ME}", wireguardEnabled=True), 4))
    assert cv.felix_config().wireguard_enabled
    assert cv.invalid_keys == {}
