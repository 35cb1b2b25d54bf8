"""The kernel state depends on what the cluster is, not on the order the manager learnt it in.

Seeded random sequences of route, endpoint and key updates and removals — local and remote CIDRs
that cover each other, CIDRs moving between nodes, shared keys, applies at random points — are fed
to one manager; a fresh manager is fed only the end state, in one go. Both must program the same
routes, peers, endpoints and allowed IPs, and a full resync of the first must change nothing. (A
local tunnel address that arrived before the local block once kept a stale throw route this way.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from meshcrypt.model.dataplane import Endpoint, RouteKind
from meshcrypt.model.keys import Key
from meshcrypt.model.net import CIDR, IPAddress, IPFamily
from meshcrypt.wireguard.node_state import ZERO_KEY
from tests.unit.wireguard.harness import HOST, Harness, key

NODES = [HOST, "peer1", "peer2", "peer3"]
CIDRS = [
    "10.0.0.0/24",
    "10.0.0.0/26",
    "10.0.0.0/32",
    "10.0.0.5/32",
    "10.0.1.0/26",
    "10.0.1.0/32",
    "10.0.2.7/32",
]
ENDPOINTS = ["1.2.3.5", "1.2.3.6", "1.2.3.7"]
SEQUENCES = 60
STEPS = 40


@dataclass
class Cluster:
    """The end state the operations leave behind."""

    owners: dict[CIDR, tuple[str, bool]] = field(default_factory=dict)
    endpoints: dict[str, IPAddress] = field(default_factory=dict)
    keys: dict[str, Key] = field(default_factory=dict)


def started(family: IPFamily) -> Harness:
    h = Harness(family)
    h.start()
    h.manager.endpoint_wireguard_update(HOST, h.published[0], None)
    h.manager.apply()
    return h


def random_step(rng: random.Random, h: Harness, world: Cluster, keys: list[Key]) -> None:
    node = rng.choice(NODES)
    op = rng.randrange(6)
    if op <= 1:
        cidr = h.cidr(rng.choice(CIDRS))
        host = rng.random() < 0.2
        h.manager.route_update(node, cidr, host=host)
        world.owners[cidr] = (node, host)
    elif op == 2:
        cidr = h.cidr(rng.choice(CIDRS))
        h.manager.route_remove(cidr)
        world.owners.pop(cidr, None)
    elif node == HOST:
        return  # this node's own endpoint and key are the device's business
    elif op == 3:
        if rng.random() < 0.7:
            addr = h.ip(rng.choice(ENDPOINTS))
            h.manager.endpoint_update(node, addr)
            world.endpoints[node] = addr
        else:
            h.manager.endpoint_remove(node)
            world.endpoints.pop(node, None)
    elif rng.random() < 0.7:
        peer_key = rng.choice(keys)
        h.manager.endpoint_wireguard_update(node, peer_key, None)
        world.keys[node] = peer_key
    else:
        h.manager.endpoint_wireguard_remove(node)
        world.keys.pop(node, None)


def fed(family: IPFamily, world: Cluster) -> Harness:
    """A fresh manager told only the end state, then applied once."""
    h = started(family)
    for node, addr in world.endpoints.items():
        h.manager.endpoint_update(node, addr)
    for node, peer_key in world.keys.items():
        h.manager.endpoint_wireguard_update(node, peer_key, None)
    for cidr, (node, host) in world.owners.items():
        h.manager.route_update(node, cidr, host=host)
    h.manager.apply()
    return h


def programmed(
    h: Harness,
) -> tuple[dict[CIDR, RouteKind], dict[Key, tuple[Endpoint | None, frozenset[CIDR]]]]:
    peers = {k: (p.endpoint, frozenset(p.allowed_ips)) for k, p in h.peers().items()}
    return h.route_kinds(), peers


@pytest.mark.parametrize("seed", range(SEQUENCES))
def test_end_state_does_not_depend_on_the_order(family: IPFamily, seed: int) -> None:
    rng = random.Random(seed)
    h = started(family)
    keys = [key(), key(), key(), ZERO_KEY]
    world = Cluster()
    for _ in range(STEPS):
        random_step(rng, h, world, keys)
        if rng.random() < 0.3:
            h.manager.apply()
    h.manager.apply()
    reached = programmed(h)

    assert reached == programmed(fed(family, world))
    h.manager.queue_resync()
    h.manager.apply()
    assert programmed(h) == reached
    assert h.our_rules() == [h.expected_rule()]
