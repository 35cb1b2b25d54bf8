"""What one WireGuard manager knows about nodes: the applied cache and the pending deltas.

Updates are recorded as pending deltas per node (`NodeUpdate`); `apply()` folds them into the cache
(`NodeData`) in one go. A delta that is undone before the next apply (an endpoint changed and changed
back, a CIDR added and removed) cancels out and causes no kernel work.

Everything an apply does here costs in proportion to the nodes it touches, never to the cache: the
counts the agent's metrics read (programmed peers, nodes sharing a key) are kept up to date as nodes
change, and pruning looks only at nodes touched since they were last seen non-empty.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from meshcrypt.model.keys import Key
from meshcrypt.model.net import CIDR, IPAddress

ZERO_KEY = Key.zero()


@dataclass(slots=True)
class NodeData:
    """The applied view of one node (the local node included, which never has an endpoint or key)."""

    endpoint: IPAddress | None = None
    public_key: Key = ZERO_KEY
    cidrs: set[CIDR] = field(default_factory=set)
    #: The key this node is programmed under on the device; set through
    #: `NodeCache.set_programmed`, which keeps the count of programmed nodes.
    programmed_key: Key | None = None
    routing_to_wireguard: bool = False

    @property
    def is_empty(self) -> bool:
        return self.endpoint is None and not self.cidrs and self.public_key.is_zero


@dataclass(slots=True)
class NodeUpdate:
    """Pending changes for one node since the last apply."""

    cidrs_added: set[CIDR] = field(default_factory=set)
    cidrs_deleted: set[CIDR] = field(default_factory=set)
    deleted: bool = False
    endpoint: IPAddress | None = None  # None = no change
    public_key: Key | None = None  # None = no change

    @property
    def is_empty(self) -> bool:
        return (
            not self.cidrs_added
            and not self.cidrs_deleted
            and not self.deleted
            and self.endpoint is None
            and self.public_key is None
        )


class NodeCache:
    """The applied node cache, with the public-key index used to detect shared keys."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeData] = {}
        # key -> its owner, or the set of them when shared (a set per key would be four times
        # the size of the name it almost always holds alone)
        self.key_owners: dict[Key, str | set[str]] = {}
        self.programmed_count = 0  # nodes with a `programmed_key`
        self.shared_key_count = 0  # nodes whose (non-zero) key another node claims too
        self._prune_candidates: set[str] = set()  # every node that may be empty is in here

    def owners(self, key: Key) -> Collection[str]:
        found = self.key_owners.get(key)
        if found is None:
            return ()
        return (found,) if isinstance(found, str) else found

    def holds(self, name: str | None, cidr: CIDR) -> bool:
        """Node `name` is cached with `cidr` among its CIDRs."""
        node = self.nodes.get(name) if name is not None else None
        return node is not None and cidr in node.cidrs

    def should_program(self, name: str) -> bool:
        """A node is a WireGuard peer iff it has an endpoint and a key that no other node claims."""
        node = self.nodes.get(name)
        if node is None or node.endpoint is None or node.public_key.is_zero:
            return False
        return len(self.owners(node.public_key)) == 1

    def set_programmed(self, name: str, key: Key | None) -> None:
        """Record the key node `name` is programmed under on the device (None: not a peer)."""
        node = self.nodes[name]
        self.programmed_count += (key is not None) - (node.programmed_key is not None)
        node.programmed_key = key

    def fold(self, updates: dict[str, NodeUpdate]) -> tuple[set[str], set[CIDR], set[Key]]:
        """Apply pending updates. Returns (changed nodes, deleted CIDRs, keys whose owners changed)."""
        changed: set[str] = set()
        deleted_cidrs: set[CIDR] = set()
        keys_changed: set[Key] = set()
        for name, update in updates.items():
            if update.is_empty:
                continue
            node = self.nodes.setdefault(name, NodeData())
            if update.deleted:
                node.endpoint = None
            elif update.endpoint is not None:
                node.endpoint = update.endpoint
            if update.public_key is not None and update.public_key != node.public_key:
                self._reindex(name, node.public_key, update.public_key, keys_changed)
                node.public_key = update.public_key
            node.cidrs -= update.cidrs_deleted
            node.cidrs |= update.cidrs_added
            deleted_cidrs |= update.cidrs_deleted
            changed.add(name)
        self._prune_candidates |= changed
        return changed, deleted_cidrs, keys_changed

    def _reindex(self, name: str, old: Key, new: Key, keys_changed: set[Key]) -> None:
        if not old.is_zero:
            self._set_owners(old, set(self.owners(old)) - {name})
            keys_changed.add(old)
        if not new.is_zero:
            self._set_owners(new, {*self.owners(new), name})
            keys_changed.add(new)

    def _set_owners(self, key: Key, owners: set[str]) -> None:
        self._count_shared(len(self.owners(key)), len(owners))
        if not owners:
            self.key_owners.pop(key, None)
        elif len(owners) == 1:
            self.key_owners[key] = next(iter(owners))
        else:
            self.key_owners[key] = owners

    def _count_shared(self, before: int, after: int) -> None:
        """A key's owners went from `before` to `after`: count its nodes in or out of the shared."""
        self.shared_key_count += (after if after > 1 else 0) - (before if before > 1 else 0)

    def prune(self, *, forget_programmed: bool = False) -> None:
        """Forget nodes that have nothing left: no endpoint, CIDRs or key.

        A node still programmed on the device is kept until its peer is removed, unless a full
        resync is due anyway (`forget_programmed`), which removes peers nobody claims. Only nodes
        changed since they were last found non-empty (or kept while programmed) are looked at.
        """
        kept: set[str] = set()
        for name in self._prune_candidates:
            node = self.nodes.get(name)
            if node is None or not node.is_empty:
                continue
            if node.programmed_key is not None and not forget_programmed:
                kept.add(name)
                continue
            self.set_programmed(name, None)
            del self.nodes[name]
        self._prune_candidates = kept
