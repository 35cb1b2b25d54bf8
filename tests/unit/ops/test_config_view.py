"""Configuration layers with their sources, command-line values, and FelixConfiguration edits."""

from __future__ import annotations

import asyncio
import json

import pytest

from meshcrypt.datastore import codecs, layout
from meshcrypt.fakes import DatastoreOp, FakeDatastore
from meshcrypt.model.config_parse import PARAMS, env_overrides, find_param
from meshcrypt.model.errors import ConfigError
from meshcrypt.ops.config_view import (
    ConfigInputs,
    ConfigResourceInvalid,
    ConfigWriteConflict,
    WriteOutcome,
    describe,
    edit_resource,
    effective_config,
    format_value,
    parse_cli_value,
    render_param,
    render_param_list,
    resource_name,
    wireguard_params,
    write_spec_field,
)


def param(name: str):
    found = find_param(name)
    assert found is not None
    return found


MTU = param("WireguardMTU")


def inputs(**kw) -> ConfigInputs:
    environ = kw.pop("environ", {})
    return ConfigInputs(node="a", env_layer=env_overrides(environ), environ=environ, **kw)


# ---- layers ------------------------------------------------------------------------------------


def test_each_layer_overrides_the_one_below_and_is_named() -> None:
    cases = [
        (inputs(), 0, "built-in default"),
        (inputs(default_spec={"wireguardMTU": 1400}), 1400, "FelixConfiguration default"),
        (
            inputs(default_spec={"wireguardMTU": 1400}, node_spec={"wireguardMTU": 1380}),
            1380,
            "FelixConfiguration node.a",
        ),
        (
            inputs(node_spec={"wireguardMTU": 1380}, environ={"felix_wireguardmtu": "1300"}),
            1300,
            "environment",
        ),
    ]
    for given, value, source in cases:
        effective = effective_config(given)
        assert effective.config.wireguard_mtu == value
        assert effective.source_of(MTU) == source


def test_describe_shows_every_layer_raw() -> None:
    given = inputs(
        default_spec={"wireguardKeepAlive": "25s"},
        node_spec={"wireguardKeepAlive": "1m"},
        environ={"FELIX_WIREGUARDPERSISTENTKEEPALIVE": "10"},
    )
    view = describe(param("wireguardKeepAlive"), effective_config(given), given)
    assert (view.cluster, view.node, view.env) == ("25s", "1m", "10")
    assert view.env_set_by == "FELIX_WIREGUARDPERSISTENTKEEPALIVE"
    assert view.effective == "10s"
    assert view.source == "environment"
    assert view.default == "0s"
    out = render_param(view, "a")
    assert "FelixConfiguration node.a" in out
    assert "effective on node a" in out and "10s  (from environment)" in out


def test_invalid_values_are_skipped_and_reported() -> None:
    effective = effective_config(inputs(default_spec={"wireguardMTU": 5, "wireguardEnabled": True}))
    assert effective.config.wireguard_mtu == 0
    assert effective.config.wireguard_enabled is True
    [error] = effective.errors
    assert "WireguardMTU" in error and "FelixConfiguration default" in error


def test_deprecated_route_table_range() -> None:
    given = inputs(node_spec={"routeTableRange": {"min": 5, "max": 10}})
    effective = effective_config(given)
    assert effective.config.routing_table_index == 5
    assert effective.source_of(param("RouteTableRanges")) == (
        "FelixConfiguration node.a (deprecated RouteTableRange)"
    )
    assert effective.value_of(param("RouteTableRange")) == (5, 10)
    assert effective_config(inputs()).value_of(param("RouteTableRange")) is None


def test_wireguard_params_and_list_rendering() -> None:
    names = [p.name for p in wireguard_params()]
    assert "WireguardEnabled" in names and "WireguardKeepAlive" not in names
    assert "WireguardPersistentKeepAlive" in names and "RouteTableRanges" in names
    assert "HealthPort" not in names
    assert set(names) <= {p.name for p in PARAMS}
    given = inputs()
    effective = effective_config(given)
    out = render_param_list([describe(p, effective, given) for p in wireguard_params()], "a")
    assert "WireguardMTU" in out and "built-in default" in out


def test_format_value() -> None:
    assert format_value(None) == "(unset)"
    assert format_value(True) == "true"
    assert format_value([{"min": 1, "max": 250}, {"min": 300, "max": 400}]) == "1-250,300-400"
    assert format_value(1400) == "1400"
    assert format_value("25s") == "25s"
    assert format_value(0xFFFF0000, hexadecimal=True) == "0xffff0000"
    assert format_value(True, hexadecimal=True) == "true"


# ---- command-line values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "stored"),
    [
        ("WireguardMTU", "1400", 1400),
        ("wireguardEnabled", "true", True),
        ("WireguardEnabledV6", "no", False),
        ("FELIX_WIREGUARDPERSISTENTKEEPALIVE", "25", "25s"),
        ("wireguardKeepAlive", "1m30s", "1m30s"),
        ("RouteTableRanges", "1-10,20-30", [{"min": 1, "max": 10}, {"min": 20, "max": 30}]),
        ("RouteTableRanges", '[{"min": 2, "max": 9}]', [{"min": 2, "max": 9}]),
        ("IptablesMarkMask", "0xffff0000", 0xFFFF0000),
        ("WireguardInterfaceName", "wg0", "wg0"),
        ("RouteSource", "workloadips", "WorkloadIPs"),
    ],
)
def test_cli_values_are_stored_in_api_form(name: str, text: str, stored: object) -> None:
    p = param(name)
    value = parse_cli_value(p, text, "default")
    assert value == stored and type(value) is type(stored)
    p.parse_api(value, "check")  # the agent reads it back


@pytest.mark.parametrize(
    ("name", "text", "expect"),
    [
        ("WireguardMTU", "99999", "must be 0 (auto) or between 68 and 65535"),
        ("WireguardMTU", "big", "must be an integer (allowed: 0 (auto) or 68-65535)"),
        ("WireguardListeningPort", "0", "must be between 1 and 65535"),
        ("WireguardEnabled", "maybe", "must be a boolean"),
        ("WireguardInterfaceName", "a-name-far-too-long", "1-15 characters"),
        ("RouteTableRanges", "250-1", "min greater than max"),
    ],
)
def test_invalid_cli_values_name_the_parameter_and_range(name: str, text: str, expect: str) -> None:
    p = param(name)
    with pytest.raises(ConfigError) as info:
        parse_cli_value(p, text, "default")
    message = str(info.value)
    assert message.startswith(f"invalid value {text!r} for {p.name}: ")
    assert expect in message
    assert "environment variable" not in message


# ---- edits -------------------------------------------------------------------------------------


def test_edit_creates_a_resource_with_metadata() -> None:
    raw = edit_resource(None, "default", "wireguardMTU", 1400, uid="u1", created="T")
    assert raw is not None
    doc = json.loads(raw)
    assert doc == {
        "apiVersion": "projectcalico.org/v3",
        "kind": "FelixConfiguration",
        "metadata": {"name": "default", "uid": "u1", "creationTimestamp": "T"},
        "spec": {"wireguardMTU": 1400},
    }
    assert codecs.decode_felix_configuration(layout.felix_configuration_key("default"), raw)
    assert edit_resource(None, "default", "wireguardMTU", codecs.DELETE, uid="", created="") is None


def test_edit_keeps_unknown_fields_and_detects_no_change() -> None:
    stored = json.dumps(
        {
            "kind": "FelixConfiguration",
            "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "node.a", "resourceVersion": "7"},
            "spec": {"logSeverityScreen": "Info", "wireguardMTU": 1400},
            "extra": {"keep": True},
        }
    ).encode()
    kw = {"uid": "x", "created": "y"}
    assert edit_resource(stored, "node.a", "wireguardMTU", 1400, **kw) is None
    new = edit_resource(stored, "node.a", "wireguardMTU", 1380, **kw)
    assert new is not None
    doc = json.loads(new)
    assert doc["spec"] == {"logSeverityScreen": "Info", "wireguardMTU": 1380}
    assert doc["extra"] == {"keep": True} and doc["metadata"]["resourceVersion"] == "7"
    removed = edit_resource(stored, "node.a", "wireguardMTU", codecs.DELETE, **kw)
    assert removed is not None
    assert json.loads(removed)["spec"] == {"logSeverityScreen": "Info"}
    assert edit_resource(removed, "node.a", "wireguardMTU", codecs.DELETE, **kw) is None
    # 1 == True in Python; a stored integer must still be replaced by the boolean.
    ones = json.dumps({"spec": {"wireguardEnabled": 1}}).encode()
    assert edit_resource(ones, "node.a", "wireguardEnabled", True, **kw) is not None


def test_edit_refuses_a_resource_it_cannot_read() -> None:
    with pytest.raises(ConfigResourceInvalid, match="cannot edit"):
        edit_resource(b"[1]", "default", "wireguardMTU", 1, uid="", created="")
    wrong_kind = json.dumps({"kind": "Node", "spec": {}}).encode()
    with pytest.raises(ConfigResourceInvalid, match="wrong kind"):
        edit_resource(wrong_kind, "default", "wireguardMTU", 1, uid="", created="")


def run(coro):
    return asyncio.run(coro)


def test_write_creates_updates_and_skips() -> None:
    ds = FakeDatastore()
    key = layout.felix_configuration_key("default")
    assert run(write_spec_field(ds, "default", "wireguardMTU", 1400)) is WriteOutcome.CREATED
    assert run(write_spec_field(ds, "default", "wireguardMTU", 1400)) is WriteOutcome.UNCHANGED
    assert run(write_spec_field(ds, "default", "wireguardMTU", 1380)) is WriteOutcome.UPDATED
    assert json.loads(ds.snapshot()[key])["spec"] == {"wireguardMTU": 1380}
    deleted = run(write_spec_field(ds, "default", "wireguardMTU", codecs.DELETE))
    assert deleted is WriteOutcome.UPDATED
    assert json.loads(ds.snapshot()[key])["spec"] == {}


def test_write_retries_when_the_resource_changes_meanwhile() -> None:
    ds = FakeDatastore()
    key = layout.felix_configuration_key("node.a")
    ds.server_put(key, json.dumps({"spec": {"wireguardEnabled": True}}).encode())
    ds.fail_next(DatastoreOp.TXN)  # a conflict: someone else wrote first
    assert run(write_spec_field(ds, "node.a", "wireguardMTU", 1400)) is WriteOutcome.UPDATED
    assert json.loads(ds.snapshot()[key])["spec"] == {
        "wireguardEnabled": True,
        "wireguardMTU": 1400,
    }
    for _ in range(3):
        ds.fail_next(DatastoreOp.TXN)
    with pytest.raises(ConfigWriteConflict):
        run(write_spec_field(ds, "node.a", "wireguardMTU", 1300, attempts=3))


def test_resource_name() -> None:
    assert resource_name(None) == "default"
    assert resource_name("n1") == "node.n1"
