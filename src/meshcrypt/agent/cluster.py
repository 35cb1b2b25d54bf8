"""The agent's view of the cluster: datastore keys in, calculator inputs and configuration out.

Every key the syncer delivers goes through `ClusterView.upsert` or `delete`. A value that does not
decode (bad JSON, bad key, bad CIDR, wrong family) is treated as absent — as Felix's validation
filter does — and logged once per key and revision, naming the key and the reason; the rest of the
cluster is unaffected. A key that turns valid again is logged as recovered.

Besides feeding the `Calculator`, the view keeps what the agent itself needs: the IP pools (for
block claims and tunnel addresses), this node's own `Node` (to notice an overwritten key or a
deleted registration) and the FelixConfiguration layers `default` and `node.<name>`. Flags say what
changed since the agent last looked; the agent clears them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

from meshcrypt.calc.calculator import Calculator
from meshcrypt.datastore import codecs, layout
from meshcrypt.datastore.layout import ResourceKind
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.config_parse import resolve, spec_overrides
from meshcrypt.model.errors import ConfigError
from meshcrypt.model.resources import (
    IPAMBlockResource,
    IPPoolResource,
    NodeResource,
    WorkloadEndpointResource,
)
from meshcrypt.ports import KeyValue

log = logging.getLogger(__name__)

ConfigLayer = dict[str, object]


class ClusterView:
    """Routes decoded resources to the calculator; keeps pools, own node and config layers."""

    def __init__(self, nodename: str, env_layer: Mapping[str, object], calc: Calculator) -> None:
        self.nodename = nodename
        self.calc = calc
        self.env_layer: ConfigLayer = dict(env_layer)
        self.pools: dict[str, IPPoolResource] = {}
        self.own_node: NodeResource | None = None
        self.nodes_seen = 0
        self._default_name = layout.DEFAULT_FELIX_CONFIGURATION
        self._node_config_name = layout.node_felix_configuration_name(nodename)
        self._layers: dict[str, ConfigLayer] = {}
        self._invalid: dict[str, int] = {}  # key -> mod_revision of the invalid value logged
        # What changed since the agent last looked (it clears them).
        self.config_changed = True
        self.pools_changed = False
        self.own_node_changed = False

    # -- input ------------------------------------------------------------------------------------

    def upsert(self, kv: KeyValue) -> None:
        parsed = layout.classify(kv.key)
        if parsed is None:
            return
        try:
            decoded = codecs.decode(kv.key, kv.value)
        except codecs.ResourceError as exc:
            self._reject(kv, str(exc))
            self._forget_fields(kv.key)
            self._remove(parsed.kind, parsed.name, kv.key)
            return
        if self._invalid.pop(kv.key, None) is not None:
            log.info("%s is valid again", kv.key)
        if decoded is not None:
            self._set(parsed.kind, parsed.name, kv, decoded[1])

    def delete(self, key: str) -> None:
        parsed = layout.classify(key)
        if parsed is None:
            return
        self._invalid.pop(key, None)
        self._forget_fields(key)
        self._remove(parsed.kind, parsed.name, key)

    @property
    def invalid_keys(self) -> Mapping[str, int]:
        """Keys whose current value is invalid (skipped), with that value's revision."""
        return dict(self._invalid)

    def felix_config(self) -> FelixConfig:
        """Defaults → FelixConfiguration default → node.<name> → environment."""
        layers = [
            self._layers.get(self._default_name, {}),
            self._layers.get(self._node_config_name, {}),
            self.env_layer,
        ]
        return resolve(*layers)

    # -- routing ----------------------------------------------------------------------------------

    def _reject(self, kv: KeyValue, reason: str) -> None:
        if self._invalid.get(kv.key) == kv.mod_revision:
            return
        self._invalid[kv.key] = kv.mod_revision
        log.error("Skipping %s (revision %d): %s", kv.key, kv.mod_revision, reason)

    def _set(self, kind: ResourceKind, name: str, kv: KeyValue, value: object) -> None:
        if kind is ResourceKind.NODE:
            assert isinstance(value, NodeResource)
            self._node(name, value)
        elif kind is ResourceKind.IP_POOL:
            assert isinstance(value, IPPoolResource)
            self.pools[name] = value
            self.pools_changed = True
            self.calc.on_pool(name, value)
        elif kind is ResourceKind.IPAM_BLOCK:
            assert isinstance(value, IPAMBlockResource)
            self.calc.on_block(name, value)
        elif kind is ResourceKind.WORKLOAD_ENDPOINT:
            assert isinstance(value, WorkloadEndpointResource)
            self.calc.on_workload(name, value)
        elif kind is ResourceKind.FELIX_CONFIGURATION:
            assert isinstance(value, dict)
            self._config_layer(name, kv, value)

    def _remove(self, kind: ResourceKind, name: str, key: str) -> None:
        if kind is ResourceKind.NODE:
            self._node(name, None)
        elif kind is ResourceKind.IP_POOL:
            if self.pools.pop(name, None) is not None:
                self.pools_changed = True
            self.calc.on_pool(name, None)
        elif kind is ResourceKind.IPAM_BLOCK:
            self.calc.on_block(name, None)
        elif kind is ResourceKind.WORKLOAD_ENDPOINT:
            self.calc.on_workload(name, None)
        elif kind is ResourceKind.FELIX_CONFIGURATION and name in self._layers:
            del self._layers[name]
            self.config_changed = True

    def _node(self, name: str, node: NodeResource | None) -> None:
        self.calc.on_node(name, node)
        if name == self.nodename and node != self.own_node:
            self.own_node = node
            self.own_node_changed = True

    def _config_layer(self, name: str, kv: KeyValue, spec: Mapping[str, object]) -> None:
        if name not in (self._default_name, self._node_config_name):
            return
        layer, errors = spec_overrides(spec, kv.key)
        self._forget_fields(kv.key, keep={error.param for error in errors})
        for error in errors:
            self._reject_field(kv, error)
        if self._layers.get(name) != layer:
            self._layers[name] = layer
            self.config_changed = True

    def _reject_field(self, kv: KeyValue, error: ConfigError) -> None:
        # One line per bad field and revision; the other fields of the resource still apply.
        tag = f"{kv.key}#{error.param}"
        if self._invalid.get(tag) == kv.mod_revision:
            return
        self._invalid[tag] = kv.mod_revision
        log.error("Ignoring a field of %s (revision %d): %s", kv.key, kv.mod_revision, error)

    def _forget_fields(self, key: str, keep: Collection[str] = ()) -> None:
        # A field that is valid again (or a resource deleted or invalid as a whole) is no longer
        # listed in `invalid_keys`.
        prefix = f"{key}#"
        for tag in [t for t in self._invalid if t.startswith(prefix)]:
            if tag[len(prefix) :] not in keep:
                del self._invalid[tag]
