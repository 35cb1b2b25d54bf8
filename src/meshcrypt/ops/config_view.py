"""FelixConfiguration for the operator: the layers, each parameter's effective value and where it
came from, and edits of one `spec` field.

Layers, lowest first, exactly as the agent resolves them (`model.config_parse`): built-in defaults →
`FelixConfiguration default` → `FelixConfiguration node.<node>` → `FELIX_*` environment variables.
Parsing and validation are `config_parse`'s; this module only arranges the layers and explains
them. An invalid field in a resource is left out of its layer and reported, as the agent does.

Edits (`config set` / `config unset`) change one camelCase field of a resource's `spec` with a
compare-and-swap on the key's mod_revision, keep every other field (unknown ones included), and
create the resource with `apiVersion`, `kind` and `metadata` when it does not exist.
"""

from __future__ import annotations

import datetime
import enum
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from meshcrypt.datastore import codecs, layout
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.config_parse import (
    DEPRECATED_ROUTE_TABLE_RANGE,
    PARAMS,
    Param,
    resolve,
    spec_overrides,
)
from meshcrypt.model.errors import ConfigError, PermanentError, RetryableError
from meshcrypt.ops import text
from meshcrypt.ports import Datastore

KIND = "FelixConfiguration"
WRITE_ATTEMPTS: Final = 10

#: The parameters `config list` shows by default: WireGuard's own and those that shape it (§3).
WIREGUARD_RELATED: Final = frozenset(
    {
        "RouteTableRanges",
        "RouteTableRange",
        "IptablesMarkMask",
        "NftablesMarkMask",
        "MTUIfacePattern",
        "DeviceRouteProtocol",
        "RouteRefreshInterval",
        "RouteSyncDisabled",
        "IPv6Support",
    }
)


class Layer(enum.Enum):
    """Where a value comes from, lowest precedence first."""

    BUILT_IN = "built-in default"
    CLUSTER = "FelixConfiguration default"
    NODE = "FelixConfiguration node"
    ENV = "environment"


def resource_name(node: str | None) -> str:
    """The FelixConfiguration a command edits: `default`, or `node.<node>`."""
    if node is None:
        return layout.DEFAULT_FELIX_CONFIGURATION
    return layout.node_felix_configuration_name(node)


def wireguard_params() -> list[Param]:
    """The WireGuard parameters and those that shape WireGuard, in registry order."""
    return [p for p in PARAMS if "wireguard" in p.name.lower() or p.name in WIREGUARD_RELATED]


# ---- layers and effective values -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigInputs:
    """What the effective configuration of one node is made of."""

    node: str
    default_spec: Mapping[str, object] = field(default_factory=dict)
    node_spec: Mapping[str, object] = field(default_factory=dict)
    env_layer: Mapping[str, object] = field(default_factory=dict)  # parsed FELIX_* values
    env_errors: Sequence[ConfigError] = ()
    environ: Mapping[str, str] = field(default_factory=dict)  # raw, to name the variable


@dataclass(frozen=True, slots=True)
class EffectiveConfig:
    node: str
    config: FelixConfig
    layers: dict[Layer, dict[str, object]]  # CLUSTER, NODE, ENV; parsed values by field
    errors: tuple[str, ...]  # invalid values left out, each naming the parameter and its source

    def source_of(self, param: Param) -> str:
        """The layer that decides the parameter's effective value, as text."""
        for layer in (Layer.ENV, Layer.NODE, Layer.CLUSTER):
            if param.field in self.layers[layer]:
                return self._layer_text(layer)
        if param.field == "route_table_ranges":
            for layer in (Layer.ENV, Layer.NODE, Layer.CLUSTER):
                if DEPRECATED_ROUTE_TABLE_RANGE in self.layers[layer]:
                    return f"{self._layer_text(layer)} (deprecated RouteTableRange)"
        return Layer.BUILT_IN.value

    def value_of(self, param: Param) -> object:
        """The effective value in Python form (None: the deprecated range, when nobody sets it)."""
        if param.field == DEPRECATED_ROUTE_TABLE_RANGE:
            for layer in (Layer.ENV, Layer.NODE, Layer.CLUSTER):
                if param.field in self.layers[layer]:
                    return self.layers[layer][param.field]
            return None
        return getattr(self.config, param.field)

    def _layer_text(self, layer: Layer) -> str:
        if layer is Layer.NODE:
            return f"{KIND} {resource_name(self.node)}"
        return str(layer.value)


def effective_config(inputs: ConfigInputs) -> EffectiveConfig:
    """Resolve the layers as the agent does; invalid resource fields are reported and skipped."""
    cluster, cluster_errors = spec_overrides(inputs.default_spec, f"{KIND} default")
    node, node_errors = spec_overrides(inputs.node_spec, f"{KIND} {resource_name(inputs.node)}")
    env = dict(inputs.env_layer)
    errors = [str(e) for e in (*cluster_errors, *node_errors, *inputs.env_errors)]
    try:
        config = resolve(cluster, node, env)
    except ConfigError as exc:  # each value is valid alone; this guards future cross-checks
        errors.append(str(exc))
        config = FelixConfig()
    layers = {Layer.CLUSTER: cluster, Layer.NODE: node, Layer.ENV: env}
    return EffectiveConfig(inputs.node, config, layers, tuple(errors))


@dataclass(frozen=True, slots=True)
class ParamValue:
    """One parameter across the layers, for `config get` and `config list`."""

    name: str
    spec_field: str
    env_variable: str
    allowed: str
    default: object  # API (JSON) form
    cluster: object | None  # the raw spec value in FelixConfiguration default; None = unset
    node: object | None  # the raw spec value in FelixConfiguration node.<node>
    env: str | None  # the raw environment value
    env_set_by: str | None  # the variable as spelled
    effective: object  # API (JSON) form
    source: str

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "spec_field": self.spec_field,
            "env_variable": self.env_variable,
            "allowed": self.allowed,
            "default": self.default,
            "felixconfiguration_default": self.cluster,
            "felixconfiguration_node": self.node,
            "environment": self.env,
            "effective": self.effective,
            "source": self.source,
        }


def allowed_text(param: Param) -> str:
    if param.allowed:
        return param.allowed
    if isinstance(param.default, bool):
        return "true or false"
    return ""


def _env_value(param: Param, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    for var in sorted(environ):
        if var.upper() == param.env_var and environ[var].strip():
            return environ[var], var
    return None, None


def _api(param: Param, value: object) -> object:
    return None if value is None else param.to_api(value)


def describe(param: Param, effective: EffectiveConfig, inputs: ConfigInputs) -> ParamValue:
    env, var = _env_value(param, inputs.environ)
    return ParamValue(
        name=param.name,
        spec_field=param.spec_name,
        env_variable=param.env_var,
        allowed=allowed_text(param),
        default=_api(param, param.default),
        cluster=inputs.default_spec.get(param.spec_name),
        node=inputs.node_spec.get(param.spec_name),
        env=env,
        env_set_by=var,
        effective=_api(param, effective.value_of(param)),
        source=effective.source_of(param),
    )


#: Integer parameters an operator reads in hexadecimal.
HEX_PARAMS: Final = frozenset({"IptablesMarkMask", "NftablesMarkMask"})


def format_value(value: object, *, hexadecimal: bool = False) -> str:
    """An API (JSON) value as an operator reads it: `true`, `1400`, `25s`, `1-250`, `0xffff0000`."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:#x}" if hexadecimal else str(value)
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, dict) and set(value) == {"min", "max"}:
        return f"{value['min']}-{value['max']}"
    return value if isinstance(value, str) else json.dumps(value)


# ---- parsing a command-line value ----------------------------------------------------------------

_ENV_ORIGIN = " (from environment variable "


def _reason(exc: ConfigError) -> str:
    head, sep, _ = exc.reason.rpartition(_ENV_ORIGIN)
    return head if sep else exc.reason


def parse_cli_value(param: Param, text: str, resource: str) -> object:
    """The JSON value to store in `spec` for a value typed on the command line.

    Accepted: the environment forms (`true`, `1400`, `25s`, `1-250`, `0xffff0000`) and JSON of the
    API form (`[{"min": 1, "max": 250}]`). Raises ConfigError naming the parameter, the reason and
    the allowed range.
    """
    source = f"{KIND} {resource}"
    try:
        value = param.parse_env(text)
    except ConfigError as exc:
        first = exc
    else:
        api = param.to_api(value)
        param.parse_api(api, source)  # what the agent will read back
        return api
    try:
        candidate: object = json.loads(text)
    except ValueError:
        candidate = text
    try:
        param.parse_api(candidate, source)
    except ConfigError:
        allowed = allowed_text(param)
        suffix = f" (allowed: {allowed})" if allowed and allowed not in first.reason else ""
        raise ConfigError(param.name, text, _reason(first) + suffix) from None
    return candidate


# ---- editing a resource --------------------------------------------------------------------------


class WriteOutcome(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


class ConfigWriteConflict(RetryableError):
    """The resource kept changing under the compare-and-swap."""


class ConfigResourceInvalid(PermanentError):
    """The stored resource cannot be edited safely (not a FelixConfiguration JSON object)."""


def new_resource(name: str, spec: Mapping[str, object], *, uid: str, created: str) -> bytes:
    doc = {
        "apiVersion": codecs.API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "uid": uid, "creationTimestamp": created},
        "spec": dict(spec),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


_Delete = type(codecs.DELETE)


def edit_resource(
    raw: bytes | None, name: str, spec_field: str, value: object, *, uid: str, created: str
) -> bytes | None:
    """The new stored value with `spec.<spec_field>` set to `value` (or removed, with
    `codecs.DELETE`); None when nothing changes. Raises ConfigResourceInvalid."""
    if raw is None:
        if isinstance(value, _Delete):
            return None
        return new_resource(name, {spec_field: value}, uid=uid, created=created)
    key = layout.felix_configuration_key(name)
    try:
        spec = codecs.decode_felix_configuration(key, raw)
        new = codecs.patch_json(raw, ("spec", spec_field), value)
    except (codecs.ResourceError, ValueError) as exc:
        raise ConfigResourceInvalid(f"cannot edit {key}: {exc}") from exc
    if isinstance(value, _Delete):
        return None if spec_field not in spec else new
    stored = spec.get(spec_field, codecs.DELETE)
    if type(stored) is type(value) and stored == value:
        return None
    return new


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def write_spec_field(
    datastore: Datastore,
    name: str,
    spec_field: str,
    value: object,
    *,
    attempts: int = WRITE_ATTEMPTS,
) -> WriteOutcome:
    """Set (or, with `codecs.DELETE`, remove) one spec field of FelixConfiguration `name`."""
    key = layout.felix_configuration_key(name)
    for _ in range(attempts):
        kv = await datastore.get(key)
        raw = None if kv is None else kv.value
        new = edit_resource(raw, name, spec_field, value, uid=str(uuid.uuid4()), created=_now())
        if new is None:
            return WriteOutcome.UNCHANGED
        revision = 0 if kv is None else kv.mod_revision
        if await datastore.txn({key: revision}, {key: new}):
            return WriteOutcome.CREATED if kv is None else WriteOutcome.UPDATED
    raise ConfigWriteConflict(f"{key} changed {attempts} times while writing it")


# ---- rendering -----------------------------------------------------------------------------------


def render_param(view: ParamValue, node: str) -> str:
    allowed = f"; allowed: {view.allowed}" if view.allowed else ""
    head = (
        f"{view.name}  (spec field {view.spec_field}, environment {view.env_variable}{allowed}; "
        f"default {format_value(view.default, hexadecimal=view.name in HEX_PARAMS)})"
    )
    hexadecimal = view.name in HEX_PARAMS
    env = "(unset)" if view.env is None else f"{view.env}  ({view.env_set_by})"
    effective = format_value(view.effective, hexadecimal=hexadecimal)
    pairs = [
        (f"{KIND} default", format_value(view.cluster, hexadecimal=hexadecimal)),
        (f"{KIND} {resource_name(node)}", format_value(view.node, hexadecimal=hexadecimal)),
        ("environment of this command", env),
        (f"effective on node {node}", f"{effective}  (from {view.source})"),
    ]
    return "\n".join([head, *text.fields(pairs, indent="  ")]) + "\n"


def render_param_list(views: Sequence[ParamValue], node: str) -> str:
    rows = [
        [v.name, format_value(v.effective, hexadecimal=v.name in HEX_PARAMS), v.source]
        for v in views
    ]
    lines = [f"effective configuration of node {node}", ""]
    lines += text.table(["PARAMETER", "VALUE", "SOURCE"], rows)
    return "\n".join(lines) + "\n"
