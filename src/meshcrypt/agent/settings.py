"""The agent's own environment (`contract.md` §3) and its Felix parameter layers.

`NODENAME`, `DATASTORE_TYPE`, `ETCD_ENDPOINTS`, `IP`, `IP6`, `MESHCRYPT_WIREGUARD_BACKEND`,
`MESHCRYPT_WIREGUARD_BOOTSTRAP_TIMEOUT` and Felix's `FELIX_DBG_WGBOOTSTRAP` are read once at start.
`FELIX_*` variables are the top configuration layer; an invalid one is reported by name and skipped
(the lower layers apply), so a typo never stops the agent.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshcrypt.agent.bootstrap import (
    DEFAULT_TIMEOUT,
    bootstrap_forced,
    bootstrap_timeout_from_env,
)
from meshcrypt.model.config_parse import env_overrides
from meshcrypt.model.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINTS = ("http://127.0.0.1:2379",)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    nodename: str
    etcd_endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    ip: str = "autodetect"
    ip6: str = "none"
    backend: str = "auto"
    bootstrap_timeout: float = DEFAULT_TIMEOUT  # the watchdog's, in seconds; 0: no watchdog
    bootstrap_forced: bool = False  # FELIX_DBG_WGBOOTSTRAP: bootstrap without host encryption
    env_layer: dict[str, object] = field(default_factory=dict)
    errors: tuple[ConfigError, ...] = ()


def _endpoints(raw: str) -> tuple[str, ...]:
    found = tuple(e.strip().rstrip("/") for e in raw.split(",") if e.strip())
    for endpoint in found:
        scheme, sep, rest = endpoint.partition("://")
        if not sep or scheme not in ("http", "https") or not rest:
            raise ConfigError("ETCD_ENDPOINTS", raw, f"{endpoint!r} is not http://host:port")
    return found or DEFAULT_ENDPOINTS


def lenient_env_layer(environ: Mapping[str, str]) -> tuple[dict[str, object], list[ConfigError]]:
    """Parse FELIX_* variables one by one, keeping the valid ones and collecting the errors."""
    layer: dict[str, object] = {}
    errors: list[ConfigError] = []
    for var, value in sorted(environ.items()):
        if not var.upper().startswith("FELIX_"):
            continue
        try:
            layer.update(env_overrides({var: value}))
        except ConfigError as exc:
            errors.append(exc)
    return layer, errors


def load_settings(environ: Mapping[str, str]) -> AgentSettings:
    """Read the agent's environment. Invalid values are reported in `errors` and replaced by defaults."""
    errors: list[ConfigError] = []
    datastore = environ.get("DATASTORE_TYPE", "etcdv3").strip() or "etcdv3"
    if datastore != "etcdv3":
        errors.append(ConfigError("DATASTORE_TYPE", datastore, "only etcdv3 is supported"))
    try:
        endpoints = _endpoints(environ.get("ETCD_ENDPOINTS", ""))
    except ConfigError as exc:
        errors.append(exc)
        endpoints = DEFAULT_ENDPOINTS
    layer, env_errors = lenient_env_layer(environ)
    errors.extend(env_errors)
    timeout, timeout_error = bootstrap_timeout_from_env(environ)
    if timeout_error is not None:
        errors.append(timeout_error)
    return AgentSettings(
        nodename=(environ.get("NODENAME", "").strip() or socket.gethostname()),
        etcd_endpoints=endpoints,
        ip=environ.get("IP", "").strip() or "autodetect",
        ip6=environ.get("IP6", "").strip() or "none",
        backend=environ.get("MESHCRYPT_WIREGUARD_BACKEND", "").strip() or "auto",
        bootstrap_timeout=timeout,
        bootstrap_forced=bootstrap_forced(environ),
        env_layer=layer,
        errors=tuple(errors),
    )
