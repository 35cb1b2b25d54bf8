"""NodeCache bookkeeping: the counts the metrics read and pruning of touched nodes only, checked
against a full walk of the cache after every step of random histories; and the manager's counts."""

from __future__ import annotations

import ipaddress
import random

import pytest

from meshcrypt.model.keys import Key
from meshcrypt.wireguard.node_state import ZERO_KEY, NodeCache, NodeUpdate
from tests.unit.wireguard.harness import Harness, key

NAMES = [f"n{i}" for i in range(8)]
KEYS = [key() for _ in range(4)]


def walked_programmed(cache: NodeCache) -> int:
    return sum(1 for node in cache.nodes.values() if node.programmed_key is not None)


def walked_shared(cache: NodeCache) -> int:
    return sum(
        1
        for node in cache.nodes.values()
        if not node.public_key.is_zero and len(cache.owners(node.public_key)) > 1
    )


def random_update(rng: random.Random, cache: NodeCache, name: str) -> NodeUpdate:
    update = NodeUpdate()
    roll = rng.random()
    if roll < 0.25:
        update.deleted = True
    elif roll < 0.5:
        update.endpoint = ipaddress.IPv4Address(rng.randrange(1, 2**32 - 1))
    if rng.random() < 0.5:
        update.public_key = rng.choice([ZERO_KEY, *KEYS])
    cidr = ipaddress.IPv4Network((rng.randrange(4) << 8, 24))
    node = cache.nodes.get(name)
    if node is not None and cidr in node.cidrs and rng.random() < 0.6:
        update.cidrs_deleted.add(cidr)
    elif rng.random() < 0.5:
        update.cidrs_added.add(cidr)
    return update


@pytest.mark.parametrize("seed", range(20))
def test_counts_and_pruning_match_a_full_walk(seed: int) -> None:
    rng = random.Random(seed)
    cache = NodeCache()
    for _ in range(300):
        touched = rng.sample(NAMES, rng.randrange(1, 4))
        cache.fold({name: random_update(rng, cache, name) for name in touched})
        for name in cache.nodes:
            if rng.random() < 0.3:
                chosen: Key | None = rng.choice([None, *KEYS])
                cache.set_programmed(name, chosen)
        assert cache.programmed_count == walked_programmed(cache)
        assert cache.shared_key_count == walked_shared(cache)

        forget = rng.random() < 0.2
        expected = {
            name
            for name, node in cache.nodes.items()
            if not (node.is_empty and (node.programmed_key is None or forget))
        }
        cache.prune(forget_programmed=forget)
        assert set(cache.nodes) == expected
        assert cache.programmed_count == walked_programmed(cache)


def test_prune_looks_only_at_touched_nodes() -> None:
    cache = NodeCache()
    endpoint = ipaddress.IPv4Address("10.0.0.1")
    cache.fold({f"n{i}": NodeUpdate(endpoint=endpoint) for i in range(1000)})
    cache.prune()
    assert cache._prune_candidates == set()  # all non-empty: nothing left to look at
    cache.fold({"n7": NodeUpdate(deleted=True)})
    assert cache._prune_candidates == {"n7"}
    cache.prune()
    assert "n7" not in cache.nodes
    assert len(cache.nodes) == 999


def test_manager_counts_follow_peers_and_shared_keys(h: Harness) -> None:
    h.start()
    shared, own = key(), key()
    h.peer("a", "1.2.3.5", own, "10.1.0.0/24")
    h.peer("b", "1.2.3.6", shared, "10.2.0.0/24")
    h.manager.apply()
    m = h.manager
    assert (m.programmed_peers, m.shared_key_count) == (2, 0)

    h.peer("c", "1.2.3.7", shared)  # c claims b's key: neither is programmed
    h.manager.apply()
    assert m.shared_key_nodes == ["b", "c"]
    assert (m.programmed_peers, m.shared_key_count) == (1, 2)

    h.manager.endpoint_wireguard_remove("c")
    h.manager.apply()
    assert (m.programmed_peers, m.shared_key_count) == (2, 0)

    h.manager.endpoint_remove("a")
    h.manager.endpoint_wireguard_remove("a")
    h.manager.route_remove(h.cidr("10.1.0.0/24"))
    h.manager.queue_resync()
    h.manager.apply()
    assert "a" not in m.nodes
    assert m.programmed_peers == len(h.peers()) == 1
