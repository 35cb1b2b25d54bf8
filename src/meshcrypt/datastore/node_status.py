"""Publication of the node's WireGuard public keys in its Node's `status` (`reference-behavior.md` §1.5).

`KeyPublisher.publish(family, key)` writes `status.wireguardPublicKey` (IPv4) or
`status.wireguardPublicKeyV6` (IPv6) with compare-and-swap, leaving every other field alone. An
empty key (WireGuard disabled, or the all-zero key) is written as `""`; an absent field already
means the same, so it is not rewritten. As in Felix:

- a write conflict re-reads and retries, three loops in all, then `StatusPublishError`;
- any other datastore failure propagates as `DatastoreUnavailable` for the caller's retry loop;
- no Node: an empty key needs nothing; a non-empty one raises `NodeNotRegistered` (the agent
  registers its Node before it publishes).

The two families are tracked independently: `request` records the wanted key per family and
`publish_pending` tries every family even when another fails, so a failing IPv6 write cannot hold
back the IPv4 key. Self-healing (someone overwrites the key) needs no extra code: the caller
publishes again when it sees a stored key that differs from its own, and `publish` rewrites it.

Only public keys ever appear in log lines.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from meshcrypt.datastore import codecs, registration
from meshcrypt.model.errors import StatusPublishError
from meshcrypt.model.keys import Key
from meshcrypt.model.net import IPFamily
from meshcrypt.ports import Datastore

log = logging.getLogger(__name__)

#: Felix's update loop: the first try and two more after a conflict.
CONFLICT_ATTEMPTS = 3

STATUS_FIELD = {IPFamily.V4: "wireguardPublicKey", IPFamily.V6: "wireguardPublicKeyV6"}


def normalise_public_key(key: str | Key | None) -> str:
    """The text to publish: base64 of the key, or "" for no key or the all-zero key.

    Raises ValueError for text that is not a base64 WireGuard key.
    """
    if key is None or key == "":
        return ""
    parsed = key if isinstance(key, Key) else Key.from_base64(key)
    return "" if parsed.is_zero else parsed.to_base64()


class KeyPublisher:
    """Publishes one node's public keys; see the module docstring."""

    def __init__(self, datastore: Datastore, node: str) -> None:
        self._datastore = datastore
        self._node = node
        self._pending: dict[IPFamily, str] = {}

    @property
    def node(self) -> str:
        return self._node

    @property
    def pending(self) -> Mapping[IPFamily, str]:
        """Keys requested but not yet published, per family."""
        return dict(self._pending)

    async def publish(self, family: IPFamily, key: str | Key | None) -> bool:
        """Make the stored key of `family` equal `key`; True when the Node was written."""
        text = normalise_public_key(key)
        field = STATUS_FIELD[family]

        def edit(raw: bytes) -> bytes | None:
            if _stored_key(raw, field) == text:
                return None
            return codecs.patch_json(raw, ("status", field), text)

        try:
            written = await registration.update_node(
                self._datastore, self._node, edit, attempts=CONFLICT_ATTEMPTS
            )
        except registration.NodeNotRegistered:
            if not text:
                return False
            raise
        except registration.NodeUpdateConflict as exc:
            raise StatusPublishError(
                f"{family.label} public key of node {self._node}: {exc}"
            ) from exc
        if written:
            log.info("published %s public key %r for node %s", family.label, text or "", self._node)
        return written

    def request(self, family: IPFamily, key: str | Key | None) -> None:
        """Record the key to publish for `family` (replacing an earlier request of that family)."""
        self._pending[family] = normalise_public_key(key)

    async def publish_pending(self) -> None:
        """Publish every requested key; a published family is no longer pending.

        Every family is tried; if any failed, the first error is raised after the others were
        attempted (they stay pending for the next call).
        """
        first_error: Exception | None = None
        for family in sorted(self._pending):
            text = self._pending[family]
            try:
                await self.publish(family, text)
            except Exception as exc:  # noqa: BLE001 - kept for the caller, after the other family
                log.warning(
                    "publishing %s public key of node %s failed (will retry): %s",
                    family.label,
                    self._node,
                    exc,
                )
                if first_error is None:
                    first_error = exc
                continue
            if self._pending.get(family) == text:
                del self._pending[family]
        if first_error is not None:
            raise first_error


def _stored_key(raw: bytes, field: str) -> str:
    """The stored key text ("" when absent or not a string); ValueError for non-JSON."""
    doc = json.loads(raw)
    status = doc.get("status") if isinstance(doc, dict) else None
    value = status.get(field) if isinstance(status, dict) else None
    return value.strip() if isinstance(value, str) else ""
