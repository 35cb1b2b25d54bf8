"""Reading Felix parameters from the environment and from FelixConfiguration resources.

Precedence, lowest first (the same order as Felix, `contract.md` §3)::

    built-in defaults (FelixConfig)
      → FelixConfiguration "default"      spec_overrides(default.spec, key)
      → FelixConfiguration "node.<name>"  spec_overrides(node.spec, key)
      → environment (FELIX_<Name>)        env_overrides(os.environ)

    config = resolve(default_layer, node_layer, env_layer)

Every layer is a plain dict keyed by `FelixConfig` field name, holding parsed and validated values.
A layer only holds what its source set; `resolve` lays them over the defaults in order.

Forms. In the environment a parameter is `FELIX_<FelixName>`, the name matched case-insensitively
(`FELIX_WIREGUARDMTU`, `felix_WireguardMTU`), the value a string: booleans are true/1/yes/y/t or
false/0/no/n/f (any case), durations are seconds (`25`, `2.5`; a Go duration such as `25s` is
accepted too), route table ranges are `1-250` or `1-10,20-30`, the mark mask is an integer with an
optional base prefix (`0xffff0000`). In a FelixConfiguration `spec` the camelCase field carries the
JSON type of the projectcalico.org/v3 API: booleans and integers, durations as Go duration strings
(`25s`, `1m30s`, `500ms`) or a number of seconds, `routeTableRanges` as a list of `{"min", "max"}`
objects. An empty value (env `""`, spec `""`/`null`/`[]`) means "not set", as in Felix.

Unknown parameters: unknown `FELIX_` variables are skipped and logged at DEBUG level (a calico-node
environment carries many Felix parameters meshcrypt has no use for); `unknown_env_variables` lists
them for diagnostics. Unknown `spec` fields are skipped silently.

Errors. Every invalid value becomes a `ConfigError` whose `param` is the Felix name and whose
message also says where the value came from (the environment variable as spelled, or the resource
and its `spec.` field). The environment is local and authoritative, so `env_overrides` raises; a bad
field in a datastore resource must not stop the agent, so `spec_overrides` returns its errors next
to the valid fields.

Aliases. `NftablesMarkMask` (`nftablesMarkMask`) sets the same value as `IptablesMarkMask`; when one
source sets both, `IptablesMarkMask` wins. The deprecated `RouteTableRange` (one `min-max` range
within 1-250) is kept under its own layer key, `DEPRECATED_ROUTE_TABLE_RANGE`, because Felix
resolves it separately: `RouteTableRanges` from any source beats `RouteTableRange` from any
source, and `RouteTableRange` applies only when no source sets `RouteTableRanges`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from meshcrypt.model.config import MARK_BITS_RESERVED_BEFORE_WIREGUARD, FelixConfig
from meshcrypt.model.errors import ConfigError

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

ENV_PREFIX = "FELIX_"
# Layer key of the deprecated single range; not a FelixConfig field (see the module docstring).
DEPRECATED_ROUTE_TABLE_RANGE = "route_table_range"

_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})
_INT_RE = re.compile(r"[+-]?[0-9]+")
_DURATION_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+")
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RANGE_RE = re.compile(r"([0-9]+)\s*-\s*([0-9]+)")
_IFACE_RE = re.compile(r"[a-zA-Z0-9:._+-]{1,15}")

MAX_ROUTE_TABLE = 0xFFFFFFFE
RESERVED_ROUTE_TABLES = frozenset({253, 254, 255})  # local, main, default
MAX_ROUTE_TABLES_TARGETED = 0xFFFF  # Felix caps the tables a RouteTableRanges value may claim


class _Invalid(Exception):
    """A value failed to parse or validate; the argument is the reason."""


TableRange = tuple[int, int]
TableRanges = tuple[TableRange, ...]


# --- value kinds: how one type reads from env text, API JSON and Python, and writes to API JSON ---


@dataclass(frozen=True, slots=True)
class _Kind:
    from_env: Callable[[str], object]
    from_api: Callable[[object], object]
    from_py: Callable[[object], object]
    to_api: Callable[[object], object]


def _same(value: object) -> object:
    return value


def _bool_env(raw: str) -> bool:
    word = raw.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise _Invalid("must be a boolean: true/1/yes/y/t or false/0/no/n/f")


def _bool_api(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("must be a JSON boolean")
    return value


def _int_env(raw: str) -> int:
    if not _INT_RE.fullmatch(raw):
        raise _Invalid("must be an integer")
    return int(raw)


def _int_api(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid("must be an integer")
    return value


def _str_api(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid("must be a string")
    return value


def _finite(seconds: float) -> float:
    if not math.isfinite(seconds):
        raise _Invalid("must be a finite number of seconds")
    return seconds


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string restricted to the API pattern (`25s`, `1m30s`, `500ms`)."""
    if text == "0":  # time.ParseDuration accepts a bare zero
        return 0.0
    if not _DURATION_RE.fullmatch(text):
        raise _Invalid("must be a duration such as 25s, 1m30s or 500ms, or a number of seconds")
    return sum(
        float(number) * _DURATION_UNIT_SECONDS[unit]
        for number, unit in _DURATION_PART_RE.findall(text)
    )


def format_go_duration(seconds: float) -> str:
    """The API form of a number of seconds: `1m30s`, `25s`, `0s`, or `0.5s` for fractions."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"cannot express {seconds!r} seconds as a duration")
    if seconds != int(seconds):
        return f"{seconds:.9f}".rstrip("0").removesuffix(".") + "s"  # Go keeps nanoseconds
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")


def _seconds_env(raw: str) -> float:
    try:
        return _finite(float(raw))
    except ValueError:
        return parse_go_duration(raw)


def _seconds_api(value: object) -> float:
    if isinstance(value, bool):
        raise _Invalid("must be a duration such as 25s or a number of seconds")
    if isinstance(value, int | float):
        return _finite(float(value))
    if isinstance(value, str):
        return _seconds_env(value)
    raise _Invalid("must be a duration such as 25s or a number of seconds")


def _seconds_py(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("must be a number of seconds")
    return _finite(float(value))


def _seconds_to_api(value: object) -> object:
    return format_go_duration(_seconds_py(value))


def _mask_env(raw: str) -> int:
    try:
        return int(raw, 0)
    except ValueError:
        raise _Invalid("must be an integer such as 0xffff0000") from None


def _pair_from_api(item: object) -> TableRange:
    if not isinstance(item, Mapping) or set(item) != {"min", "max"}:
        raise _Invalid('must be {"min": <int>, "max": <int>}')
    return (_int_api(item["min"]), _int_api(item["max"]))


def _pair_from_py(item: object) -> TableRange:
    if isinstance(item, str | bytes) or not isinstance(item, Sequence) or len(item) != 2:
        raise _Invalid("must be a (min, max) pair")
    return (_int_api(item[0]), _int_api(item[1]))


def _range_env(raw: str) -> TableRange:
    match = _RANGE_RE.fullmatch(raw.strip())
    if match is None:
        raise _Invalid("must be a range such as 1-250")
    return (int(match[1]), int(match[2]))


def _ranges_env(raw: str) -> TableRanges:
    try:
        return tuple(_range_env(part) for part in raw.split(","))
    except _Invalid:
        raise _Invalid("must be ranges such as 1-250 or 1-10,20-30") from None


def _ranges_api(value: object) -> TableRanges:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise _Invalid('must be a list of {"min": <int>, "max": <int>} objects')
    return tuple(_pair_from_api(item) for item in value)


def _ranges_py(value: object) -> TableRanges:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise _Invalid("must be a sequence of (min, max) pairs")
    return tuple(_pair_from_py(item) for item in value)


def _range_to_api(value: object) -> object:
    low, high = _pair_from_py(value)
    return {"min": low, "max": high}


def _ranges_to_api(value: object) -> object:
    return [_range_to_api(pair) for pair in _ranges_py(value)]


def _one_of(*options: str) -> _Kind:
    canonical = {option.lower(): option for option in options}
    reason = "must be one of " + ", ".join(options)

    def pick(value: object) -> str:
        if not isinstance(value, str) or value.lower() not in canonical:
            raise _Invalid(reason)
        return canonical[value.lower()]

    return _Kind(from_env=pick, from_api=pick, from_py=pick, to_api=_same)


_BOOL = _Kind(from_env=_bool_env, from_api=_bool_api, from_py=_bool_api, to_api=_same)
_INT = _Kind(from_env=_int_env, from_api=_int_api, from_py=_int_api, to_api=_same)
_STR = _Kind(from_env=_same, from_api=_str_api, from_py=_str_api, to_api=_same)
_SECONDS = _Kind(
    from_env=_seconds_env, from_api=_seconds_api, from_py=_seconds_py, to_api=_seconds_to_api
)
_MASK = _Kind(from_env=_mask_env, from_api=_int_api, from_py=_int_api, to_api=_same)
_RANGES = _Kind(
    from_env=_ranges_env, from_api=_ranges_api, from_py=_ranges_py, to_api=_ranges_to_api
)
_RANGE = _Kind(
    from_env=_range_env, from_api=_pair_from_api, from_py=_pair_from_py, to_api=_range_to_api
)


# --- validation ranges: each takes the parsed value and raises _Invalid ---


def _between(low: int, high: int) -> Callable[[object], None]:
    def check(value: object) -> None:
        assert isinstance(value, int | float)
        if not low <= value <= high:
            raise _Invalid(f"must be between {low} and {high}")

    return check


def _no_check(value: object) -> None:
    del value


def _check_mtu(value: object) -> None:
    if value != 0 and not (isinstance(value, int) and 68 <= value <= 65535):
        raise _Invalid("must be 0 (auto) or between 68 and 65535")


def _check_iface(value: object) -> None:
    if not isinstance(value, str) or not _IFACE_RE.fullmatch(value):
        raise _Invalid("must be 1-15 characters from a-z A-Z 0-9 : . _ + -")


def _check_regex(value: object) -> None:
    assert isinstance(value, str)
    try:
        re.compile(value)
    except re.error as exc:
        raise _Invalid(f"is not a valid regular expression ({exc})") from None


def _check_positive(value: object) -> None:
    assert isinstance(value, int | float)
    if value <= 0:
        raise _Invalid("must be greater than 0")


def _check_table_bound(value: int) -> None:
    if not 1 <= value <= MAX_ROUTE_TABLE:
        raise _Invalid(f"table indices must be between 1 and {MAX_ROUTE_TABLE:#x}")
    if value in RESERVED_ROUTE_TABLES:
        raise _Invalid("table indices 253, 254 and 255 are reserved by the kernel")


def _check_table_ranges(value: object) -> None:
    ranges = _ranges_py(value)
    if not ranges:
        raise _Invalid("must hold at least one range")
    for low, high in ranges:
        _check_table_bound(low)
        _check_table_bound(high)
        if low > high:
            raise _Invalid(f"range {low}-{high} has min greater than max")
    if sum(high - low + 1 for low, high in ranges) > MAX_ROUTE_TABLES_TARGETED:
        raise _Invalid(f"must not claim more than {MAX_ROUTE_TABLES_TARGETED} tables")


def _check_deprecated_range(value: object) -> None:
    low, high = _pair_from_py(value)
    if not 1 <= low <= high <= 250:
        raise _Invalid("must be a range min-max with 1 <= min <= max <= 250")


def _check_mark_mask(value: object) -> None:
    assert isinstance(value, int)
    if not 0 < value <= 0xFFFFFFFF:
        raise _Invalid("must be a 32-bit mask")
    needed = MARK_BITS_RESERVED_BEFORE_WIREGUARD + 1
    if value.bit_count() < needed:
        raise _Invalid(f"must have at least {needed} bits set (Felix's marks, then WireGuard's)")


# --- the registry ---


@dataclass(frozen=True, slots=True)
class Param:
    """One Felix parameter: its names in each source, its default, parsers and validation range."""

    field: str  # FelixConfig field (DEPRECATED_ROUTE_TABLE_RANGE for RouteTableRange)
    name: str  # Felix name; the environment variable is FELIX_<name>, any case
    spec_name: str  # field of a FelixConfiguration spec
    default: object
    allowed: str  # the validation range, for help text
    kind: _Kind
    check: Callable[[object], None]
    alias_of: str | None = None  # Felix name of the parameter that wins when a source sets both

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse_env(self, raw: str, var: str | None = None) -> object:
        """The parsed, validated value of an environment string (`var` names it in errors)."""
        origin = f"from environment variable {var or self.env_var}"
        return self._parse(self.kind.from_env, raw.strip(), origin)

    def parse_api(self, value: object, source: str) -> object:
        """The parsed, validated value of a FelixConfiguration spec field read from `source`."""
        return self._parse(self.kind.from_api, value, f"in {source} field spec.{self.spec_name}")

    def normalize(self, value: object, origin: str) -> object:
        """Validate a value in Python form (as a layer holds it); return it normalized."""
        return self._parse(self.kind.from_py, value, origin)

    def to_api(self, value: object) -> object:
        """The JSON value a FelixConfiguration spec holds for a Python value."""
        return self.kind.to_api(value)

    def _parse(self, parse: Callable[[_T], object], raw: _T, origin: str) -> object:
        try:
            value = parse(raw)
            self.check(value)
        except _Invalid as exc:
            raise ConfigError(self.name, raw, f"{exc} ({origin})") from None
        return value


_DEFAULTS: dict[str, object] = {
    f.name: getattr(FelixConfig(), f.name) for f in dataclasses.fields(FelixConfig)
}


def _param(
    field: str,
    name: str,
    spec_name: str,
    kind: _Kind,
    check: Callable[[object], None] = _no_check,
    allowed: str = "",
    alias_of: str | None = None,
) -> Param:
    return Param(
        field=field,
        name=name,
        spec_name=spec_name,
        default=_DEFAULTS.get(field),
        allowed=allowed,
        kind=kind,
        check=check,
        alias_of=alias_of,
    )


_PORT = "1-65535"
_IFACE = "regex ^[a-zA-Z0-9:._+-]{1,15}$"
_MTU = "0 (auto) or 68-65535"
_MASK_TEXT = f"32-bit mask with at least {MARK_BITS_RESERVED_BEFORE_WIREGUARD + 1} bits set"

PARAMS: tuple[Param, ...] = (
    _param("wireguard_enabled", "WireguardEnabled", "wireguardEnabled", _BOOL),
    _param("wireguard_enabled_v6", "WireguardEnabledV6", "wireguardEnabledV6", _BOOL),
    _param(
        "wireguard_listening_port",
        "WireguardListeningPort",
        "wireguardListeningPort",
        _INT,
        _between(1, 65535),
        _PORT,
    ),
    _param(
        "wireguard_listening_port_v6",
        "WireguardListeningPortV6",
        "wireguardListeningPortV6",
        _INT,
        _between(1, 65535),
        _PORT,
    ),
    _param(
        "wireguard_routing_rule_priority",
        "WireguardRoutingRulePriority",
        "wireguardRoutingRulePriority",
        _INT,
        _between(1, 32765),
        "1-32765",
    ),
    _param(
        "wireguard_interface_name",
        "WireguardInterfaceName",
        "wireguardInterfaceName",
        _STR,
        _check_iface,
        _IFACE,
    ),
    _param(
        "wireguard_interface_name_v6",
        "WireguardInterfaceNameV6",
        "wireguardInterfaceNameV6",
        _STR,
        _check_iface,
        _IFACE,
    ),
    _param("wireguard_mtu", "WireguardMTU", "wireguardMTU", _INT, _check_mtu, _MTU),
    _param("wireguard_mtu_v6", "WireguardMTUV6", "wireguardMTUV6", _INT, _check_mtu, _MTU),
    _param(
        "wireguard_host_encryption_enabled",
        "WireguardHostEncryptionEnabled",
        "wireguardHostEncryptionEnabled",
        _BOOL,
    ),
    _param(
        "wireguard_persistent_keepalive",
        "WireguardPersistentKeepAlive",
        "wireguardKeepAlive",
        _SECONDS,
        _between(0, 65535),
        "0 (off) to 65535 seconds",
    ),
    _param(
        "wireguard_threading_enabled",
        "WireguardThreadingEnabled",
        "wireguardThreadingEnabled",
        _BOOL,
    ),
    _param(
        "prometheus_wireguard_metrics_enabled",
        "PrometheusWireGuardMetricsEnabled",
        "prometheusWireGuardMetricsEnabled",
        _BOOL,
    ),
    _param(
        "prometheus_metrics_enabled", "PrometheusMetricsEnabled", "prometheusMetricsEnabled", _BOOL
    ),
    _param(
        "prometheus_metrics_port",
        "PrometheusMetricsPort",
        "prometheusMetricsPort",
        _INT,
        _between(1, 65535),
        _PORT,
    ),
    _param("health_enabled", "HealthEnabled", "healthEnabled", _BOOL),
    _param("health_port", "HealthPort", "healthPort", _INT, _between(1, 65535), _PORT),
    _param(
        "route_table_ranges",
        "RouteTableRanges",
        "routeTableRanges",
        _RANGES,
        _check_table_ranges,
        f"ranges min-max, 1 <= min <= max <= {MAX_ROUTE_TABLE:#x}, bounds not 253-255",
    ),
    _param(
        DEPRECATED_ROUTE_TABLE_RANGE,
        "RouteTableRange",
        "routeTableRange",
        _RANGE,
        _check_deprecated_range,
        "one range min-max within 1-250 (deprecated: use RouteTableRanges)",
    ),
    _param(
        "iptables_mark_mask",
        "IptablesMarkMask",
        "iptablesMarkMask",
        _MASK,
        _check_mark_mask,
        _MASK_TEXT,
    ),
    _param(
        "iptables_mark_mask",
        "NftablesMarkMask",
        "nftablesMarkMask",
        _MASK,
        _check_mark_mask,
        _MASK_TEXT,
        alias_of="IptablesMarkMask",
    ),
    _param(
        "mtu_iface_pattern",
        "MTUIfacePattern",
        "mtuIfacePattern",
        _STR,
        _check_regex,
        "a regular expression",
    ),
    _param(
        "device_route_protocol",
        "DeviceRouteProtocol",
        "deviceRouteProtocol",
        _INT,
        _between(0, 255),
        "0-255",
    ),
    _param(
        "route_refresh_interval",
        "RouteRefreshInterval",
        "routeRefreshInterval",
        _SECONDS,
        _check_positive,
        "seconds, greater than 0",
    ),
    _param(
        "netlink_timeout",
        "NetlinkTimeoutSecs",
        "netlinkTimeout",
        _SECONDS,
        _check_positive,
        "seconds, greater than 0",
    ),
    _param("route_sync_disabled", "RouteSyncDisabled", "routeSyncDisabled", _BOOL),
    _param(
        "route_source",
        "RouteSource",
        "routeSource",
        _one_of("CalicoIPAM", "WorkloadIPs"),
        allowed="CalicoIPAM or WorkloadIPs",
    ),
    _param("ipv6_support", "IPv6Support", "ipv6Support", _BOOL),
)

# A source that sets a parameter and its alias: the alias is applied first, so the primary wins.
_APPLY_ORDER = tuple(sorted(PARAMS, key=lambda p: p.alias_of is None))
_BY_NAME = {p.name.lower(): p for p in PARAMS}
_BY_FOLDED_SPEC_NAME = {p.spec_name.lower(): p for p in PARAMS}
_BY_FIELD = {p.field: p for p in PARAMS if p.alias_of is None}


def find_param(name: str) -> Param | None:
    """The parameter called `name`: Felix name, env variable or spec field (any case), or field."""
    folded = name.lower()
    if folded.startswith(ENV_PREFIX.lower()):
        folded = folded[len(ENV_PREFIX) :]
    return _BY_NAME.get(folded) or _BY_FOLDED_SPEC_NAME.get(folded) or _BY_FIELD.get(name)


# --- the sources ---


def _felix_env(environ: Mapping[str, str]) -> Iterable[tuple[str, str]]:
    """(variable, key) of every FELIX_ variable, sorted so duplicates are reported stably."""
    for var in sorted(environ):
        if var.upper().startswith(ENV_PREFIX):
            yield var, var[len(ENV_PREFIX) :].lower()


def unknown_env_variables(environ: Mapping[str, str]) -> list[str]:
    """The FELIX_ variables that name no parameter meshcrypt reads (skipped by `env_overrides`)."""
    return [var for var, key in _felix_env(environ) if key not in _BY_NAME]


def env_overrides(environ: Mapping[str, str]) -> dict[str, object]:
    """The parameters set by FELIX_<Name> variables, keyed by FelixConfig field.

    Raises ConfigError for an invalid value, or when two spellings of one variable disagree.
    """
    chosen: dict[str, tuple[str, str]] = {}  # Felix name -> (variable, value)
    for var, key in _felix_env(environ):
        param = _BY_NAME.get(key)
        if param is None:
            _log.debug("ignoring unknown Felix parameter %s", var)
            continue
        raw = environ[var].strip()
        if not raw:
            continue  # Felix treats an empty value as unset
        earlier = chosen.get(param.name)
        if earlier is not None and earlier[1] != raw:
            reason = f"{var} conflicts with {earlier[0]}={earlier[1]!r}"
            raise ConfigError(param.name, raw, reason)
        chosen[param.name] = (var, raw)
    values: dict[str, object] = {}
    for param in _APPLY_ORDER:
        if param.name in chosen:
            var, raw = chosen[param.name]
            values[param.field] = param.parse_env(raw, var)
    return values


def _api_unset(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, list) and not value)


def spec_overrides(
    spec: Mapping[str, object], source: str
) -> tuple[dict[str, object], list[ConfigError]]:
    """The parameters a FelixConfiguration `spec` sets, keyed by FelixConfig field, and its errors.

    An invalid field is reported in the error list and left out; the other fields still apply.
    `source` (the resource's key or name) is quoted in each error.
    """
    values: dict[str, object] = {}
    errors: list[ConfigError] = []
    for param in _APPLY_ORDER:
        raw = spec.get(param.spec_name)
        if _api_unset(raw):
            continue
        try:
            values[param.field] = param.parse_api(raw, source)
        except ConfigError as exc:
            errors.append(exc)
    return values, errors


def _merge(layers: Sequence[Mapping[str, object]]) -> dict[str, object]:
    merged: dict[str, object] = {}
    for index, layer in enumerate(layers):
        for field, value in layer.items():
            param = _BY_FIELD.get(field)
            if param is None:
                raise ValueError(f"layer {index}: {field!r} is not a FelixConfig field")
            merged[field] = param.normalize(value, f"in configuration layer {index}")
    return merged


def resolve(*layers: Mapping[str, object]) -> FelixConfig:
    """Defaults, then each layer in order (the last wins). Layers are keyed by FelixConfig field.

    Raises ConfigError for an invalid value and ValueError for a key that is not a field.
    """
    merged = _merge(layers)
    legacy = merged.pop(DEPRECATED_ROUTE_TABLE_RANGE, None)
    if legacy is not None:
        if "route_table_ranges" in merged:
            _log.warning(
                "RouteTableRange and RouteTableRanges are both set; using RouteTableRanges"
            )
        else:
            _log.warning("RouteTableRange is deprecated; use RouteTableRanges")
            merged["route_table_ranges"] = (legacy,)
    # Each value was validated against its field above; the untyped call just assembles them.
    build: Callable[..., FelixConfig] = FelixConfig
    return build(**merged)


def load_from_env(environ: Mapping[str, str]) -> FelixConfig:
    """Defaults overridden by the environment only (no datastore)."""
    return resolve(env_overrides(environ))
