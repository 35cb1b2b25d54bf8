"""The routing rule of one family: `not from all fwmark <mark>/<mark> lookup <table>`.

Reconciled only when out of sync (the desired rule changed, or a resync was queued): every rule that
points at our table but differs from the desired one is deleted, then the desired one is added if
missing. A rule removed out-of-band is therefore restored at the next resync. Deleting the differing
rules first also avoids the kernel's duplicate check, which ignores the invert flag.
"""

from __future__ import annotations

import logging

from meshcrypt.model.dataplane import Rule
from meshcrypt.model.errors import KernelError, NotFound, UpdateFailed
from meshcrypt.model.net import IPFamily
from meshcrypt.ports import CachedClient, Netlink

log = logging.getLogger(__name__)


class RuleReconciler:
    """Keeps exactly the desired rule (or none) pointing at our table for one family."""

    def __init__(self, family: IPFamily, table: int, netlink: CachedClient[Netlink]) -> None:
        self.family = family
        self.table = table
        self._netlink = netlink
        self._desired: Rule | None = None
        self._in_sync = False

    def set_rule(self, rule: Rule | None) -> None:
        if rule != self._desired:
            self._desired = rule
            self._in_sync = False

    def queue_resync(self) -> None:
        self._in_sync = False

    @property
    def in_sync(self) -> bool:
        return self._in_sync

    def apply(self) -> None:
        if self._in_sync:
            return
        try:
            netlink = self._netlink.get()
            kept = False
            for rule in netlink.rules(self.family):
                if rule.table != self.table:
                    continue
                if rule == self._desired and not kept:
                    kept = True
                    continue
                log.info("Removing routing rule %s", rule)
                try:
                    netlink.rule_delete(rule)
                except NotFound:
                    pass
            if self._desired is not None and not kept:
                log.info("Adding routing rule %s", self._desired)
                netlink.rule_add(self._desired)
        except KernelError as exc:
            self._netlink.reset()
            raise UpdateFailed(f"{self.family.label} routing rule: {exc}") from exc
        self._in_sync = True
