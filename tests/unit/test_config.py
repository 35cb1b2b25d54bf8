"""Felix configuration: defaults, the environment and FelixConfiguration forms, ranges, layering."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from meshcrypt.model.config import DEFAULT_MTU_IFACE_PATTERN, FelixConfig
from meshcrypt.model.config_parse import (
    DEPRECATED_ROUTE_TABLE_RANGE,
    PARAMS,
    Param,
    env_overrides,
    find_param,
    format_go_duration,
    load_from_env,
    parse_go_duration,
    resolve,
    spec_overrides,
    unknown_env_variables,
)
from meshcrypt.model.errors import ConfigError, PermanentError
from meshcrypt.model.net import IPFamily

SOURCE = "/calico/resources/v3/projectcalico.org/felixconfigurations/default"

# (FelixConfig field, Felix name, FelixConfiguration spec field, default), written out independently
# of the registry so a typo on either side fails.
EXPECTED = [
    ("wireguard_enabled", "WireguardEnabled", "wireguardEnabled", False),
    ("wireguard_enabled_v6", "WireguardEnabledV6", "wireguardEnabledV6", False),
    ("wireguard_listening_port", "WireguardListeningPort", "wireguardListeningPort", 51820),
    ("wireguard_listening_port_v6", "WireguardListeningPortV6", "wireguardListeningPortV6", 51821),
    (
        "wireguard_routing_rule_priority",
        "WireguardRoutingRulePriority",
        "wireguardRoutingRulePriority",
        99,
    ),
    (
        "wireguard_interface_name",
        "WireguardInterfaceName",
        "wireguardInterfaceName",
        "wireguard.cali",
    ),
    (
        "wireguard_interface_name_v6",
        "WireguardInterfaceNameV6",
        "wireguardInterfaceNameV6",
        "wg-v6.cali",
    ),
    ("wireguard_mtu", "WireguardMTU", "wireguardMTU", 0),
    ("wireguard_mtu_v6", "WireguardMTUV6", "wireguardMTUV6", 0),
    (
        "wireguard_host_encryption_enabled",
        "WireguardHostEncryptionEnabled",
        "wireguardHostEncryptionEnabled",
        False,
    ),
    (
        "wireguard_persistent_keepalive",
        "WireguardPersistentKeepAlive",
        "wireguardKeepAlive",
        0.0,
    ),
    (
        "wireguard_threading_enabled",
        "WireguardThreadingEnabled",
        "wireguardThreadingEnabled",
        False,
    ),
    (
        "prometheus_wireguard_metrics_enabled",
        "PrometheusWireGuardMetricsEnabled",
        "prometheusWireGuardMetricsEnabled",
        True,
    ),
    ("prometheus_metrics_enabled", "PrometheusMetricsEnabled", "prometheusMetricsEnabled", False),
    ("prometheus_metrics_port", "PrometheusMetricsPort", "prometheusMetricsPort", 9091),
    ("health_enabled", "HealthEnabled", "healthEnabled", True),
    ("health_port", "HealthPort", "healthPort", 9099),
    ("route_table_ranges", "RouteTableRanges", "routeTableRanges", ((1, 250),)),
    ("iptables_mark_mask", "IptablesMarkMask", "iptablesMarkMask", 0xFFFF0000),
    ("mtu_iface_pattern", "MTUIfacePattern", "mtuIfacePattern", DEFAULT_MTU_IFACE_PATTERN),
    ("device_route_protocol", "DeviceRouteProtocol", "deviceRouteProtocol", 3),
    ("route_refresh_interval", "RouteRefreshInterval", "routeRefreshInterval", 90.0),
    ("netlink_timeout", "NetlinkTimeoutSecs", "netlinkTimeout", 10.0),
    ("route_sync_disabled", "RouteSyncDisabled", "routeSyncDisabled", False),
    ("route_source", "RouteSource", "routeSource", "CalicoIPAM"),
    ("ipv6_support", "IPv6Support", "ipv6Support", True),
]
BOOL_NAMES = [name for _, name, _, default in EXPECTED if isinstance(default, bool)]
TRUE_WORDS = ["true", "1", "yes", "y", "t", "TRUE", "True", "YES", "Y", "T", " true "]
FALSE_WORDS = ["false", "0", "no", "n", "f", "FALSE", "False", "NO", "N", "F"]


def env_var(name: str) -> str:
    return "FELIX_" + name.upper()


def field_of(name: str) -> str:
    param = find_param(name)
    assert param is not None
    return param.field


def spec_name_of(name: str) -> str:
    param = find_param(name)
    assert param is not None
    return param.spec_name


# --- defaults and the registry ---


@pytest.mark.parametrize(("field", "name", "spec_name", "default"), EXPECTED)
def test_default_of_every_parameter(field: str, name: str, spec_name: str, default: object) -> None:
    assert getattr(FelixConfig(), field) == default
    assert getattr(load_from_env({}), field) == default
    assert getattr(resolve(), field) == default


@pytest.mark.parametrize(("field", "name", "spec_name", "default"), EXPECTED)
def test_registry_names(field: str, name: str, spec_name: str, default: object) -> None:
    param = find_param(name)
    assert param is not None
    assert (param.field, param.name, param.spec_name, param.default) == (
        field,
        name,
        spec_name,
        default,
    )
    assert param.env_var == env_var(name)


def test_every_config_field_has_exactly_one_primary_parameter() -> None:
    primaries = [p.field for p in PARAMS if p.alias_of is None]
    config_fields = {f.name for f in dataclasses.fields(FelixConfig)}
    assert sorted(primaries) == sorted(config_fields | {DEPRECATED_ROUTE_TABLE_RANGE})


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_default_is_valid_and_round_trips_through_the_api_form(param: Param) -> None:
    if param.default is None:  # the deprecated RouteTableRange has no default of its own
        assert param.name == "RouteTableRange"
        return
    assert param.normalize(param.default, "test") == param.default
    assert param.parse_api(param.to_api(param.default), SOURCE) == param.default


@pytest.mark.parametrize(
    ("lookup", "expected"),
    [
        ("WireguardMTU", "wireguard_mtu"),
        ("wireguardmtu", "wireguard_mtu"),
        ("FELIX_WIREGUARDMTU", "wireguard_mtu"),
        ("wireguardKeepAlive", "wireguard_persistent_keepalive"),
        ("netlinkTimeout", "netlink_timeout"),
        ("wireguard_mtu_v6", "wireguard_mtu_v6"),
    ],
)
def test_find_param(lookup: str, expected: str) -> None:
    param = find_param(lookup)
    assert param is not None and param.field == expected


def test_find_param_unknown() -> None:
    assert find_param("LogSeverityScreen") is None


# --- booleans ---


@pytest.mark.parametrize("name", BOOL_NAMES)
@pytest.mark.parametrize("word", TRUE_WORDS)
def test_bool_true_spellings(name: str, word: str) -> None:
    assert env_overrides({env_var(name): word}) == {field_of(name): True}


@pytest.mark.parametrize("name", BOOL_NAMES)
@pytest.mark.parametrize("word", FALSE_WORDS)
def test_bool_false_spellings(name: str, word: str) -> None:
    assert env_overrides({env_var(name): word}) == {field_of(name): False}


@pytest.mark.parametrize("word", ["on", "off", "2", "enabled", "truee", "-1"])
def test_bool_rejects_other_words(word: str) -> None:
    with pytest.raises(ConfigError) as info:
        env_overrides({"FELIX_WIREGUARDENABLED": word})
    assert info.value.param == "WireguardEnabled"
    assert "FELIX_WIREGUARDENABLED" in str(info.value)


@pytest.mark.parametrize(
    "var",
    [
        "FELIX_WIREGUARDENABLED",
        "FELIX_WireguardEnabled",
        "felix_wireguardenabled",
        "Felix_WireGuardEnabled",
    ],
)
def test_env_variable_name_is_case_insensitive(var: str) -> None:
    assert load_from_env({var: "true"}).wireguard_enabled is True


@pytest.mark.parametrize("value", [True, False])
def test_bool_api_form(value: bool) -> None:
    assert spec_overrides({"wireguardEnabled": value}, SOURCE) == ({"wireguard_enabled": value}, [])


@pytest.mark.parametrize("value", ["true", 1, 0])
def test_bool_api_form_needs_a_json_boolean(value: object) -> None:
    values, errors = spec_overrides({"wireguardEnabled": value}, SOURCE)
    assert values == {}
    assert [e.param for e in errors] == ["WireguardEnabled"]


# --- ranges: ok at the edge, ConfigError one past it ---

INT_EDGES = [
    # (Felix name, valid values, invalid values)
    ("WireguardListeningPort", [1, 65535], [0, 65536]),
    ("WireguardListeningPortV6", [1, 65535], [0, 65536]),
    ("PrometheusMetricsPort", [1, 65535], [0, 65536]),
    ("HealthPort", [1, 65535], [0, 65536]),
    ("WireguardRoutingRulePriority", [1, 32765], [0, 32766]),
    ("WireguardMTU", [0, 68, 65535], [-1, 1, 67, 65536]),
    ("WireguardMTUV6", [0, 68, 65535], [-1, 67, 65536]),
    ("DeviceRouteProtocol", [0, 255], [-1, 256]),
]
INT_OK = [(name, v) for name, ok, _ in INT_EDGES for v in ok]
INT_BAD = [(name, v) for name, _, bad in INT_EDGES for v in bad]


@pytest.mark.parametrize(("name", "value"), INT_OK)
def test_int_edge_accepted(name: str, value: int) -> None:
    assert env_overrides({env_var(name): str(value)}) == {field_of(name): value}
    assert spec_overrides({spec_name_of(name): value}, SOURCE) == (
        {field_of(name): value},
        [],
    )


@pytest.mark.parametrize(("name", "value"), INT_BAD)
def test_int_one_past_the_edge_rejected(name: str, value: int) -> None:
    with pytest.raises(ConfigError) as info:
        env_overrides({env_var(name): str(value)})
    assert info.value.param == name
    assert name in str(info.value) and env_var(name) in str(info.value)
    assert isinstance(info.value, PermanentError)
    spec_name = spec_name_of(name)
    values, errors = spec_overrides({spec_name: value}, SOURCE)
    assert values == {}
    assert len(errors) == 1 and name in str(errors[0]) and SOURCE in str(errors[0])


@pytest.mark.parametrize("raw", ["abc", "1.5", "0x10", "1 2", "1_400"])
def test_int_env_rejects_non_integers(raw: str) -> None:
    with pytest.raises(ConfigError, match="WireguardMTU"):
        env_overrides({"FELIX_WIREGUARDMTU": raw})


@pytest.mark.parametrize("value", ["1400", 1400.0, True, None])
def test_int_api_needs_a_json_integer(value: object) -> None:
    values, errors = spec_overrides({"wireguardMTU": value}, SOURCE)
    assert values == {}
    assert len(errors) == (0 if value is None else 1)  # null means unset


@pytest.mark.parametrize("name", ["WireguardInterfaceName", "WireguardInterfaceNameV6"])
@pytest.mark.parametrize("value", ["a", "abcdefghijklmno", "wg:0.a_b+c-d", "WG0"])
def test_interface_name_accepted(name: str, value: str) -> None:
    assert load_from_env({env_var(name): value}) == resolve({field_of(name): value})
    assert getattr(load_from_env({env_var(name): value}), field_of(name)) == value


@pytest.mark.parametrize("name", ["WireguardInterfaceName", "WireguardInterfaceNameV6"])
@pytest.mark.parametrize("value", ["abcdefghijklmnop", "wg 0", "wg/0", "wg@0", "wgé"])
def test_interface_name_rejected(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        env_overrides({env_var(name): value})
    assert name in str(info.value) and env_var(name) in str(info.value)


def test_interface_name_api_empty_means_unset() -> None:
    assert spec_overrides({"wireguardInterfaceName": ""}, SOURCE) == ({}, [])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0", 0.0), ("65535", 65535.0), ("25", 25.0), ("2.5", 2.5), ("25s", 25.0)],
)
def test_keepalive_accepted(raw: str, expected: float) -> None:
    config = load_from_env({"FELIX_WIREGUARDPERSISTENTKEEPALIVE": raw})
    assert config.wireguard_persistent_keepalive == expected


@pytest.mark.parametrize("raw", ["-1", "65536", "-0.5"])
def test_keepalive_rejected(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        env_overrides({"FELIX_WireguardPersistentKeepAlive": raw})
    assert "WireguardPersistentKeepAlive" in str(info.value)
    assert "FELIX_WireguardPersistentKeepAlive" in str(info.value)


@pytest.mark.parametrize("name", ["RouteRefreshInterval", "NetlinkTimeoutSecs"])
def test_intervals_must_be_positive(name: str) -> None:
    assert env_overrides({env_var(name): "0.001"}) == {field_of(name): 0.001}
    for raw in ["0", "-1", "0s"]:
        with pytest.raises(ConfigError) as info:
            env_overrides({env_var(name): raw})
        assert name in str(info.value) and env_var(name) in str(info.value)


def test_mtu_iface_pattern() -> None:
    assert load_from_env({"FELIX_MTUIFACEPATTERN": "^eth[0-9]+$"}).mtu_iface_pattern == (
        "^eth[0-9]+$"
    )
    with pytest.raises(ConfigError, match=r"MTUIfacePattern.*FELIX_MTUIFACEPATTERN"):
        env_overrides({"FELIX_MTUIFACEPATTERN": "(eth"})
    _, errors = spec_overrides({"mtuIfacePattern": "[a-"}, SOURCE)
    assert [e.param for e in errors] == ["MTUIfacePattern"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("workloadips", "WorkloadIPs"), ("CalicoIPAM", "CalicoIPAM"), ("CALICOIPAM", "CalicoIPAM")],
)
def test_route_source(raw: str, expected: str) -> None:
    assert load_from_env({"FELIX_ROUTESOURCE": raw}).route_source == expected


def test_route_source_rejects_other_values() -> None:
    with pytest.raises(ConfigError, match="RouteSource"):
        env_overrides({"FELIX_ROUTESOURCE": "BGP"})


# --- durations ---


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("25", 25.0),
        ("2.5", 2.5),
        ("0", 0.0),
        ("25s", 25.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
    ],
)
def test_duration_env_form(raw: str, seconds: float) -> None:
    assert env_overrides({"FELIX_WIREGUARDPERSISTENTKEEPALIVE": raw}) == {
        "wireguard_persistent_keepalive": seconds
    }


@pytest.mark.parametrize("raw", ["abc", "25x", "1d", "nan", "inf", "s", "1m 30s"])
def test_duration_env_form_rejected(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"RouteRefreshInterval.*FELIX_ROUTEREFRESHINTERVAL"):
        env_overrides({"FELIX_ROUTEREFRESHINTERVAL": raw})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("25s", 25.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("0s", 0.0),
        (25, 25.0),
        (2.5, 2.5),
        ("25", 25.0),
    ],
)
def test_duration_api_form(value: object, seconds: float) -> None:
    assert spec_overrides({"wireguardKeepAlive": value}, SOURCE) == (
        {"wireguard_persistent_keepalive": seconds},
        [],
    )


@pytest.mark.parametrize("value", ["25x", "-5s", "1d", "5 s", True, [5], {"s": 5}, -1])
def test_duration_api_form_rejected(value: object) -> None:
    values, errors = spec_overrides({"wireguardKeepAlive": value}, SOURCE)
    assert values == {}
    assert len(errors) == 1
    assert "WireguardPersistentKeepAlive" in str(errors[0])
    assert "spec.wireguardKeepAlive" in str(errors[0])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (25, "25s"), (90, "1m30s"), (3600, "1h"), (3725, "1h2m5s"), (0.5, "0.5s")],
)
def test_go_duration_formatting_round_trips(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text
    assert parse_go_duration(text) == seconds


def test_go_duration_formatting_rejects_negative() -> None:
    with pytest.raises(ValueError, match="-1"):
        format_go_duration(-1)


# --- route table ranges ---


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1-250", ((1, 250),)),
        ("1-10,20-30", ((1, 10), (20, 30))),
        (" 1 - 10 , 20-30 ", ((1, 10), (20, 30))),
        ("7-7", ((7, 7),)),
        ("250-260", ((250, 260),)),  # spans the reserved tables, which the allocator skips
        ("1-65535", ((1, 65535),)),
        ("4294967294-4294967294", ((0xFFFFFFFE, 0xFFFFFFFE),)),
        ("256-300,1-2", ((256, 300), (1, 2))),
    ],
)
def test_route_table_ranges_env_form(raw: str, expected: tuple[tuple[int, int], ...]) -> None:
    config = load_from_env({"FELIX_ROUTETABLERANGES": raw})
    assert config.route_table_ranges == expected
    assert config.routing_table_index == expected[0][0]


@pytest.mark.parametrize(
    "raw",
    [
        "0-5",  # below 1
        "1-4294967295",  # above 0xfffffffe
        "4294967295-4294967295",
        "253-260",  # a reserved bound
        "10-254",
        "255-255",
        "5-4",  # min > max
        "1-65536",  # more tables than Felix allows
        "1-",
        "abc",
        "1-10;20-30",
        "5",
    ],
)
def test_route_table_ranges_env_form_rejected(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        env_overrides({"FELIX_ROUTETABLERANGES": raw})
    assert "RouteTableRanges" in str(info.value)
    assert "FELIX_ROUTETABLERANGES" in str(info.value)


def test_route_table_ranges_api_form() -> None:
    spec = {"routeTableRanges": [{"min": 1, "max": 10}, {"min": 20, "max": 30}]}
    assert spec_overrides(spec, SOURCE) == ({"route_table_ranges": ((1, 10), (20, 30))}, [])


@pytest.mark.parametrize(
    "value",
    [
        {"min": 1, "max": 2},
        [{"min": 1}],
        [{"min": "1", "max": 2}],
        [{"min": 1, "max": 2, "step": 1}],
        "1-250",
        [{"min": 253, "max": 300}],
        [{"min": 9, "max": 3}],
    ],
)
def test_route_table_ranges_api_form_rejected(value: object) -> None:
    values, errors = spec_overrides({"routeTableRanges": value}, SOURCE)
    assert values == {}
    assert [e.param for e in errors] == ["RouteTableRanges"]


def test_route_table_ranges_api_empty_list_means_unset() -> None:
    assert spec_overrides({"routeTableRanges": []}, SOURCE) == ({}, [])


def test_deprecated_route_table_range_applies_when_ranges_unset() -> None:
    layer = env_overrides({"FELIX_ROUTETABLERANGE": "10-20"})
    assert layer == {DEPRECATED_ROUTE_TABLE_RANGE: (10, 20)}
    assert resolve(layer).route_table_ranges == ((10, 20),)
    spec_layer, errors = spec_overrides({"routeTableRange": {"min": 5, "max": 6}}, SOURCE)
    assert errors == []
    assert resolve(spec_layer).routing_table_index == 5


def test_route_table_ranges_from_any_source_beat_the_deprecated_range(
    caplog: pytest.LogCaptureFixture,
) -> None:
    default_layer, _ = spec_overrides({"routeTableRanges": [{"min": 30, "max": 40}]}, SOURCE)
    env_layer = env_overrides({"FELIX_ROUTETABLERANGE": "10-20"})
    with caplog.at_level(logging.WARNING):
        assert resolve(default_layer, env_layer).route_table_ranges == ((30, 40),)
    assert "RouteTableRanges" in caplog.text


@pytest.mark.parametrize("raw", ["1-251", "0-5", "5-4", "1-10,20-30"])
def test_deprecated_route_table_range_rejected(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"RouteTableRange.*FELIX_ROUTETABLERANGE"):
        env_overrides({"FELIX_ROUTETABLERANGE": raw})


# --- mark mask ---


def test_default_mark() -> None:
    assert FelixConfig().wireguard_mark == 0x100000
    assert FelixConfig().for_family(IPFamily.V4).firewall_mark == 0x100000


@pytest.mark.parametrize(
    ("raw", "mask", "mark"),
    [
        ("0xff000000", 0xFF000000, 0x10000000),
        ("0xFFFF0000", 0xFFFF0000, 0x100000),
        ("4294901760", 0xFFFF0000, 0x100000),
        ("0x1f", 0x1F, 0x10),  # exactly five bits: the fifth goes to WireGuard
        ("0b1010101010", 0b1010101010, 0b1000000000),
    ],
)
def test_mark_mask_env_form(raw: str, mask: int, mark: int) -> None:
    config = load_from_env({"FELIX_IPTABLESMARKMASK": raw})
    assert (config.iptables_mark_mask, config.wireguard_mark) == (mask, mark)


@pytest.mark.parametrize("raw", ["0xf", "0", "0x100000000", "-1", "mask"])
def test_mark_mask_rejected(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        env_overrides({"FELIX_IPTABLESMARKMASK": raw})
    assert "IptablesMarkMask" in str(info.value) and "FELIX_IPTABLESMARKMASK" in str(info.value)


def test_mark_mask_api_form_and_alias() -> None:
    assert spec_overrides({"iptablesMarkMask": 0xFF000000}, SOURCE) == (
        {"iptables_mark_mask": 0xFF000000},
        [],
    )
    assert spec_overrides({"nftablesMarkMask": 0x00FF0000}, SOURCE) == (
        {"iptables_mark_mask": 0x00FF0000},
        [],
    )
    both = {"nftablesMarkMask": 0x00FF0000, "iptablesMarkMask": 0xFF000000}
    assert spec_overrides(both, SOURCE) == ({"iptables_mark_mask": 0xFF000000}, [])
    _, errors = spec_overrides({"iptablesMarkMask": "0xff000000"}, SOURCE)
    assert [e.param for e in errors] == ["IptablesMarkMask"]


def test_mark_mask_env_alias() -> None:
    assert load_from_env({"FELIX_NFTABLESMARKMASK": "0xff000000"}).wireguard_mark == 0x10000000
    env = {"FELIX_NFTABLESMARKMASK": "0xff000000", "FELIX_IPTABLESMARKMASK": "0xffff0000"}
    assert load_from_env(env).iptables_mark_mask == 0xFFFF0000


# --- per-family view ---


def distinct_config() -> FelixConfig:
    return resolve(
        env_overrides(
            {
                "FELIX_WIREGUARDENABLED": "true",
                "FELIX_WIREGUARDENABLEDV6": "false",
                "FELIX_WIREGUARDINTERFACENAME": "wg4",
                "FELIX_WIREGUARDINTERFACENAMEV6": "wg6",
                "FELIX_WIREGUARDLISTENINGPORT": "1000",
                "FELIX_WIREGUARDLISTENINGPORTV6": "2000",
                "FELIX_WIREGUARDMTU": "1400",
                "FELIX_WIREGUARDMTUV6": "1380",
                "FELIX_ROUTETABLERANGES": "99-120",
                "FELIX_WIREGUARDROUTINGRULEPRIORITY": "98",
                "FELIX_IPTABLESMARKMASK": "0xff000000",
                "FELIX_WIREGUARDHOSTENCRYPTIONENABLED": "true",
                "FELIX_WIREGUARDPERSISTENTKEEPALIVE": "25.9",
                "FELIX_WIREGUARDTHREADINGENABLED": "true",
                "FELIX_DEVICEROUTEPROTOCOL": "80",
                "FELIX_ROUTESYNCDISABLED": "true",
            }
        )
    )


@pytest.mark.parametrize(
    ("family", "enabled", "iface", "port", "mtu"),
    [(IPFamily.V4, True, "wg4", 1000, 1400), (IPFamily.V6, False, "wg6", 2000, 1380)],
)
def test_for_family(family: IPFamily, enabled: bool, iface: str, port: int, mtu: int) -> None:
    view = distinct_config().for_family(family)
    assert view.family is family
    assert (view.enabled, view.interface_name, view.listening_port, view.mtu) == (
        enabled,
        iface,
        port,
        mtu,
    )
    # Shared by both families (Felix uses RoutingTableIndex for v4 and v6).
    assert view.routing_table == 99
    assert view.rule_priority == 98
    assert view.firewall_mark == 0x10000000
    assert view.host_encryption is True
    assert view.persistent_keepalive == 25
    assert view.threading is True
    assert view.route_protocol == 80
    assert view.route_sync_disabled is True


@pytest.mark.parametrize("family", list(IPFamily))
def test_for_family_mtu_override(family: IPFamily) -> None:
    assert distinct_config().for_family(family, mtu=1234).mtu == 1234


# --- layering ---

DEFAULT_SPEC = {"wireguardMTU": 1400, "wireguardListeningPort": 5000, "wireguardEnabled": True}
NODE_SPEC = {"wireguardMTU": 1300, "wireguardEnabled": False, "healthPort": 9000}
ENV = {"FELIX_WIREGUARDMTU": "1200"}


@pytest.mark.parametrize(
    ("use_default", "use_node", "use_env", "mtu"),
    [
        (False, False, False, 0),
        (True, False, False, 1400),
        (True, True, False, 1300),
        (True, True, True, 1200),
        (False, True, True, 1200),
        (True, False, True, 1200),
        (False, True, False, 1300),
    ],
)
def test_layering_precedence(use_default: bool, use_node: bool, use_env: bool, mtu: int) -> None:
    default_layer, errors1 = spec_overrides(DEFAULT_SPEC if use_default else {}, "default")
    node_layer, errors2 = spec_overrides(NODE_SPEC if use_node else {}, "node.n1")
    env_layer = env_overrides(ENV if use_env else {})
    assert errors1 == errors2 == []
    config = resolve(default_layer, node_layer, env_layer)
    assert config.wireguard_mtu == mtu
    # Fields set only by a lower layer survive the higher ones.
    assert config.wireguard_listening_port == (5000 if use_default else 51820)
    assert config.health_port == (9000 if use_node else 9099)
    assert config.wireguard_enabled is (use_default and not use_node)


def test_empty_env_value_does_not_override_lower_layers() -> None:
    default_layer, _ = spec_overrides(DEFAULT_SPEC, "default")
    assert resolve(default_layer, env_overrides({"FELIX_WIREGUARDMTU": ""})).wireguard_mtu == 1400
    assert env_overrides({"FELIX_WIREGUARDMTU": "   "}) == {}


def test_spec_errors_are_collected_while_valid_fields_apply() -> None:
    spec = {
        "wireguardEnabled": True,
        "wireguardMTU": 5,
        "wireguardListeningPort": 70000,
        "wireguardKeepAlive": "25s",
        "wireguardInterfaceName": "this-name-is-far-too-long",
        "logSeverityScreen": "Info",  # not ours: ignored
        "routeTableRanges": None,  # null: unset
    }
    values, errors = spec_overrides(spec, "felixconfigurations/node.n1")
    assert values == {"wireguard_enabled": True, "wireguard_persistent_keepalive": 25.0}
    assert sorted(e.param for e in errors) == [
        "WireguardInterfaceName",
        "WireguardListeningPort",
        "WireguardMTU",
    ]
    for error in errors:
        assert "felixconfigurations/node.n1" in str(error)
    assert resolve(values).wireguard_enabled is True


# --- the environment in general ---


def test_unknown_and_foreign_variables_are_ignored() -> None:
    environ = {
        "FELIX_LOGSEVERITYSCREEN": "info",
        "FELIX_WIREGUARDKEEPALIVE": "25",  # the spec name, not the Felix name
        "PATH": "/usr/bin",
        "WIREGUARDENABLED": "true",
        "FELIX_WIREGUARDENABLED": "true",
    }
    assert env_overrides(environ) == {"wireguard_enabled": True}
    assert unknown_env_variables(environ) == ["FELIX_LOGSEVERITYSCREEN", "FELIX_WIREGUARDKEEPALIVE"]


def test_two_spellings_that_disagree_are_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        env_overrides({"FELIX_WIREGUARDMTU": "1400", "FELIX_WireguardMTU": "1300"})
    assert info.value.param == "WireguardMTU"
    assert "FELIX_WIREGUARDMTU" in str(info.value) and "FELIX_WireguardMTU" in str(info.value)
    messages = set()
    for environ in (
        {"FELIX_WIREGUARDMTU": "1400", "FELIX_WireguardMTU": "1300"},
        {"FELIX_WireguardMTU": "1300", "FELIX_WIREGUARDMTU": "1400"},
    ):
        with pytest.raises(ConfigError) as again:
            env_overrides(environ)
        messages.add(str(again.value))
    assert len(messages) == 1  # the same report whatever order the environment lists them in
    agreeing = {"FELIX_WIREGUARDMTU": "1400", "felix_wireguardmtu": "1400"}
    assert env_overrides(agreeing) == {"wireguard_mtu": 1400}


def test_env_error_names_the_variable_as_spelled() -> None:
    with pytest.raises(ConfigError) as info:
        env_overrides({"felix_WireguardMTU": "9"})
    assert info.value.param == "WireguardMTU"
    assert info.value.value == "9"
    assert "felix_WireguardMTU" in str(info.value)


# --- resolve ---


def test_resolve_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="wireguard_mtu4"):
        resolve({"wireguard_mtu4": 1400})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("wireguard_mtu", 5),
        ("wireguard_mtu", "1400"),
        ("wireguard_enabled", 1),
        ("route_table_ranges", ((254, 260),)),
        ("route_table_ranges", "1-5"),
        ("iptables_mark_mask", 0xF),
    ],
)
def test_resolve_validates_layer_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match="layer 1"):
        resolve({}, {field: value})


def test_resolve_normalizes_python_values() -> None:
    config = resolve({"route_table_ranges": [[5, 9]], "wireguard_persistent_keepalive": 25})
    assert config.route_table_ranges == ((5, 9),)
    assert config.wireguard_persistent_keepalive == 25.0
    assert isinstance(config.wireguard_persistent_keepalive, float)
    hash(config)  # still a hashable frozen value


def test_api_form_of_every_kind() -> None:
    def api(name: str, value: object) -> object:
        param = find_param(name)
        assert param is not None
        return param.to_api(value)

    assert api("RouteTableRanges", ((1, 10), (20, 30))) == [
        {"min": 1, "max": 10},
        {"min": 20, "max": 30},
    ]
    assert api("RouteTableRange", (1, 10)) == {"min": 1, "max": 10}
    assert api("RouteRefreshInterval", 90.0) == "1m30s"
    assert api("WireguardEnabled", True) is True
    assert api("IptablesMarkMask", 0xFF000000) == 0xFF000000
