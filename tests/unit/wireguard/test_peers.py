"""Scenarios §5.3 (two peers, keys and local CIDR) and §5.4 (destinations), for IPv4 and IPv6."""

from __future__ import annotations

import pytest

from meshcrypt.fakes import Counters
from meshcrypt.model.dataplane import RouteKind
from tests.unit.wireguard.harness import PORTS, TABLE, Harness, key

DEVICE, THROW = RouteKind.DEVICE, RouteKind.THROW


class TwoPeers:
    """§5.3 set-up: local key reported; peer1 key1 @1.2.3.5; peer2 key2 @1.2.3.6; local cidr_local."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        h.start()
        h.manager.endpoint_wireguard_update("my-host", h.published[0], None)
        self.key1, self.key2, self.key3 = key(), key(), key()
        h.peer("peer1", "1.2.3.5", self.key1)
        h.peer("peer2", "1.2.3.6", self.key2)
        h.manager.route_update("my-host", h.cidr("192.180.0.0/30"))
        h.manager.apply()
        self.base = h.kernel.counters
        self.configures = len(h.configure_log)

    def diff(self) -> Counters:
        return self.h.kernel.counters - self.base

    def wg_changes(self) -> int:
        return len(self.h.configure_log) - self.configures

    def mark(self) -> None:
        self.base = self.h.kernel.counters
        self.configures = len(self.h.configure_log)


@pytest.fixture
def two(h: Harness) -> TwoPeers:
    return TwoPeers(h)


def test_two_peers_programmed(two: TwoPeers) -> None:  # 22
    h = two.h
    assert h.our_rules() == [h.expected_rule()]
    assert h.kernel.counters.rule_delete == 0
    peers = h.peers()
    assert set(peers) == {two.key1, two.key2}
    assert peers[two.key1].endpoint == h.endpoint("1.2.3.5")
    assert peers[two.key2].endpoint == h.endpoint("1.2.3.6")
    assert all(not p.allowed_ips for p in peers.values())


def test_local_endpoint_changes_are_no_ops(two: TwoPeers) -> None:  # 23
    h = two.h
    h.manager.endpoint_update("my-host", h.ip("1.2.3.4"))
    h.manager.apply()
    h.manager.endpoint_remove("my-host")
    h.manager.apply()
    d = two.diff()
    assert (d.route_add, d.route_delete, d.route_update) == (0, 0, 0)
    assert two.wg_changes() == 0


def test_endpoint_change_and_back_is_no_op(two: TwoPeers) -> None:  # 24
    h = two.h
    h.manager.endpoint_update("peer1", h.ip("9.9.9.9"))
    h.manager.endpoint_update("peer1", h.ip("1.2.3.5"))
    h.manager.apply()
    assert two.wg_changes() == 0


def test_key_change_and_back_is_no_op(two: TwoPeers) -> None:  # 25
    h = two.h
    h.manager.endpoint_wireguard_update("peer1", two.key2, None)
    h.manager.endpoint_wireguard_update("peer1", two.key1, None)
    h.manager.apply()
    assert two.wg_changes() == 0


def test_peer_added_and_removed_before_apply_is_no_op(two: TwoPeers) -> None:  # 26
    h = two.h
    h.peer("peer3", "10.10.20.20", two.key3)
    h.manager.endpoint_remove("peer3")
    h.manager.endpoint_wireguard_remove("peer3")
    h.manager.apply()
    d = two.diff()
    assert (d.route_add, d.route_delete, d.route_update) == (0, 0, 0)
    assert two.wg_changes() == 0
    assert set(h.peers()) == {two.key1, two.key2}


def test_local_wireguard_removed_republishes(two: TwoPeers) -> None:  # 27
    h = two.h
    assert len(h.published) == 1
    h.manager.endpoint_wireguard_remove("my-host")
    h.manager.apply()
    assert len(h.published) == 2
    assert h.published[1] == h.published[0] == h.device().public_key


def test_local_cidr_is_throw_route(two: TwoPeers) -> None:  # 28
    h = two.h
    routes = h.routes()
    assert list(routes) == [h.cidr("192.180.0.0/30")]
    route = routes[h.cidr("192.180.0.0/30")]
    assert route.kind is THROW
    assert route.table == TABLE
    assert route.metric == h.family.default_route_metric
    assert h.kernel.counters.route_delete == 0


def test_local_host_route_is_throw(two: TwoPeers) -> None:  # 29
    h = two.h
    h.manager.route_update("my-host", h.cidr("192.168.6.0/32"))
    h.manager.apply()
    d = two.diff()
    assert (d.route_add, d.route_delete) == (1, 0)
    assert h.route_kinds()[h.cidr("192.168.6.0/32")] is THROW


def test_local_address_covered_by_a_later_local_block_loses_its_route(two: TwoPeers) -> None:
    """The tunnel address can arrive before its block (as it does at a node's first start): once
    the block covers it, only the block's throw route remains; without the block the address's
    own throw route comes back."""
    h = two.h
    tunnel, block = h.cidr("192.168.6.0/32"), h.cidr("192.168.6.0/26")
    h.manager.route_update("my-host", tunnel)
    h.manager.apply()
    assert h.route_kinds()[tunnel] is THROW
    h.manager.route_update("my-host", block)
    h.manager.apply()
    kinds = h.route_kinds()
    assert tunnel not in kinds
    assert kinds[block] is THROW
    h.manager.route_remove(block)
    h.manager.apply()
    kinds = h.route_kinds()
    assert block not in kinds
    assert kinds[tunnel] is THROW


@pytest.mark.parametrize("sequence", ["remove-then-update", "update", "update-remove-update"])
def test_local_host_route_moves_to_peer(two: TwoPeers, sequence: str) -> None:  # 30, 31, 32
    h = two.h
    cidr6 = h.cidr("192.168.6.0/32")
    h.manager.route_update("my-host", cidr6)
    h.manager.apply()
    two.mark()
    if sequence == "remove-then-update":
        h.manager.route_remove(cidr6)
        h.manager.route_update("peer1", cidr6)
    elif sequence == "update":
        h.manager.route_update("peer1", cidr6)
    else:
        h.manager.route_update("peer1", cidr6)
        h.manager.route_remove(cidr6)
        h.manager.route_update("peer1", cidr6)
    h.manager.apply()
    d = two.diff()
    assert (d.route_add, d.route_update, d.route_delete) == (0, 1, 0)
    assert h.route_kinds()[cidr6] is DEVICE
    assert h.allowed(two.key1) == {cidr6}


def test_shared_key_programs_neither(two: TwoPeers) -> None:  # 33
    h = two.h
    h.manager.endpoint_wireguard_update("peer2", two.key1, None)
    h.manager.apply()
    assert h.peers() == {}
    d = two.diff()
    assert (d.route_add, d.route_delete) == (0, 0)


def test_shared_key_resync_repairs_tampered_device(two: TwoPeers) -> None:  # 34
    h = two.h
    old_peers = list(h.peers().values())
    h.manager.endpoint_wireguard_update("peer2", two.key1, None)
    h.manager.apply()
    port = PORTS[h.family]
    h.kernel.tamper_device(h.iface, listen_port=port + 1, fwmark=11, peers=old_peers)
    h.kernel.set_link_mtu(h.iface, 2001)
    h.manager.queue_resync()
    h.manager.apply()
    device = h.device()
    assert device.listen_port == port
    assert device.fwmark == 10
    assert device.peers == {}
    assert h.kernel.link(h.iface).mtu == 2000


def test_conflict_resolved_programs_both(two: TwoPeers) -> None:  # 35
    h = two.h
    h.manager.endpoint_wireguard_update("peer2", two.key1, None)
    h.manager.apply()
    h.manager.endpoint_wireguard_update("peer2", two.key2, None)
    h.manager.apply()
    peers = h.peers()
    assert set(peers) == {two.key1, two.key2}
    assert peers[two.key1].endpoint == h.endpoint("1.2.3.5")
    assert peers[two.key2].endpoint == h.endpoint("1.2.3.6")


def test_keyless_node_not_a_peer(two: TwoPeers) -> None:  # 36
    h = two.h
    h.manager.endpoint_update("peer3", h.ip("10.10.20.20"))
    h.manager.apply()
    assert set(h.peers()) == {two.key1, two.key2}
    d = two.diff()
    assert (d.route_add, d.route_delete) == (0, 0)


def test_conflict_turns_routes_into_throw(two: TwoPeers) -> None:
    """Beyond the reference: both claimants of a shared key fall back to throw routes."""
    h = two.h
    h.manager.route_update("peer1", h.cidr("192.168.1.0/24"))
    h.manager.route_update("peer2", h.cidr("192.168.3.0/24"))
    h.manager.apply()
    assert set(h.route_kinds().values()) == {DEVICE, THROW}
    h.manager.endpoint_wireguard_update("peer2", two.key1, None)
    h.manager.apply()
    kinds = h.route_kinds()
    assert kinds[h.cidr("192.168.1.0/24")] is THROW
    assert kinds[h.cidr("192.168.3.0/24")] is THROW
    h.manager.endpoint_wireguard_update("peer2", two.key2, None)
    h.manager.apply()
    kinds = h.route_kinds()
    assert kinds[h.cidr("192.168.1.0/24")] is DEVICE
    assert kinds[h.cidr("192.168.3.0/24")] is DEVICE


def test_key_moves_between_nodes_in_one_apply(two: TwoPeers) -> None:
    """Beyond the reference: a key leaving one node and joining another in the same batch."""
    h = two.h
    h.manager.endpoint_wireguard_remove("peer1")
    h.peer("peer3", "10.10.20.20", two.key1)
    h.manager.apply()
    peers = h.peers()
    assert set(peers) == {two.key1, two.key2}
    assert peers[two.key1].endpoint == h.endpoint("10.10.20.20")


# §5.4 ------------------------------------------------------------------------------------------


class Destinations(TwoPeers):
    """§5.4 set-up: peer1 cidr1+cidr2; peer2 cidr3; peer3 (no key) @10.10.20.20 with cidr4."""

    def __init__(self, h: Harness) -> None:
        super().__init__(h)
        h.manager.endpoint_update("peer3", h.ip("10.10.20.20"))
        self.c = {n: h.cidr(c) for n, c in CIDRS.items()}
        h.manager.route_update("peer1", self.c["cidr1"])
        h.manager.route_update("peer1", self.c["cidr2"])
        h.manager.route_update("peer2", self.c["cidr3"])
        h.manager.route_update("peer3", self.c["cidr4"])
        h.manager.apply()
        self.setup_diff = self.diff()
        self.mark()


CIDRS = {
    "local": "192.180.0.0/30",
    "cidr1": "192.168.1.0/24",
    "cidr2": "192.168.2.0/24",
    "cidr3": "192.168.3.0/24",
    "cidr4": "192.168.4.0/26",
    "cidr5": "192.168.5.0/26",
}


@pytest.fixture
def dst(h: Harness) -> Destinations:
    return Destinations(h)


def test_destinations_allowed_ips(dst: Destinations) -> None:  # 37
    h, c = dst.h, dst.c
    assert h.allowed(dst.key1) == {c["cidr1"], c["cidr2"]}
    assert h.allowed(dst.key2) == {c["cidr3"]}
    assert h.peers()[dst.key1].endpoint == h.endpoint("1.2.3.5")
    assert h.peers()[dst.key2].endpoint == h.endpoint("1.2.3.6")


def test_destination_routes(dst: Destinations) -> None:  # 38
    h, c = dst.h, dst.c
    assert (dst.setup_diff.route_add, dst.setup_diff.route_delete) == (4, 0)
    routes = h.routes()
    ifindex = h.kernel.link(h.iface).index
    for name in ("cidr1", "cidr2", "cidr3"):
        r = routes[c[name]]
        assert (r.kind, r.ifindex, r.protocol, r.table) == (DEVICE, ifindex, 3, TABLE)
        assert r.metric == h.family.default_route_metric
    throw = routes[c["cidr4"]]
    assert (throw.kind, throw.ifindex) == (THROW, None)


def test_remove_cidr(dst: Destinations) -> None:  # 39
    h, c = dst.h, dst.c
    h.manager.route_remove(c["cidr1"])
    h.manager.apply()
    d = dst.diff()
    assert (d.route_add, d.route_delete) == (0, 1)
    assert c["cidr1"] not in h.routes()
    assert dst.wg_changes() == 1
    assert h.allowed(dst.key1) == {c["cidr2"]}


def test_swap_and_back_is_no_op(dst: Destinations) -> None:  # 40
    h, c = dst.h, dst.c
    h.manager.route_update("peer2", c["cidr1"])
    h.manager.route_update("peer1", c["cidr3"])
    h.manager.route_update("peer1", c["cidr1"])
    h.manager.route_update("peer2", c["cidr3"])
    h.manager.apply()
    d = dst.diff()
    assert (d.route_add, d.route_update, d.route_delete) == (0, 0, 0)
    assert dst.wg_changes() == 0


def test_add_and_remove_is_no_op(dst: Destinations) -> None:  # 41
    h, c = dst.h, dst.c
    h.manager.route_update("peer1", c["cidr5"])
    h.manager.route_remove(c["cidr5"])
    h.manager.apply()
    d = dst.diff()
    assert (d.route_add, d.route_update, d.route_delete) == (0, 0, 0)
    assert dst.wg_changes() == 0


def test_unknown_cidr_removal_is_no_op(dst: Destinations) -> None:  # 42
    h = dst.h
    h.manager.route_remove(h.cidr("10.99.0.0/16"))
    h.manager.apply()
    d = dst.diff()
    assert (d.route_add, d.route_update, d.route_delete) == (0, 0, 0)
    assert dst.wg_changes() == 0


def test_two_peers_deleted(dst: Destinations) -> None:  # 43
    h, c = dst.h, dst.c
    for name in ("peer3", "peer2"):
        h.manager.endpoint_remove(name)
        h.manager.endpoint_wireguard_remove(name)
    h.manager.route_remove(c["cidr4"])
    h.manager.route_remove(c["cidr3"])
    h.manager.apply()
    d = dst.diff()
    assert (d.route_add, d.route_delete) == (0, 2)
    assert dst.wg_changes() >= 1
    assert set(h.peers()) == {dst.key1}
    assert set(h.manager.nodes) == {"my-host", "peer1"}


def _step(dst: Destinations, action: str) -> tuple[int, int, int, int]:
    h, c = dst.h, dst.c
    dst.mark()
    if action == "endpoint":
        h.manager.endpoint_remove("peer2")
    elif action == "key":
        h.manager.endpoint_wireguard_remove("peer2")
    else:
        h.manager.route_remove(c["cidr3"])
    h.manager.apply()
    d = dst.diff()
    return len(h.manager.nodes), d.route_update, d.route_delete, dst.wg_changes()


def test_sequence_endpoint_key_route(dst: Destinations) -> None:  # 44
    h, c = dst.h, dst.c
    assert _step(dst, "endpoint") == (4, 1, 0, 1)
    assert h.route_kinds()[c["cidr3"]] is THROW
    assert set(h.peers()) == {dst.key1}
    assert _step(dst, "key") == (4, 0, 0, 0)
    assert _step(dst, "route") == (3, 0, 1, 0)
    assert c["cidr3"] not in h.routes()


def test_sequence_route_endpoint_key(dst: Destinations) -> None:  # 45
    h, c = dst.h, dst.c
    assert _step(dst, "route") == (4, 0, 1, 1)
    assert len(h.peers()) == 2
    assert _step(dst, "endpoint") == (4, 0, 0, 1)
    assert set(h.peers()) == {dst.key1}
    assert _step(dst, "key") == (3, 0, 0, 0)
    assert c["cidr3"] not in h.routes()


def test_sequence_key_route_endpoint(dst: Destinations) -> None:  # 46
    h, c = dst.h, dst.c
    assert _step(dst, "key") == (4, 1, 0, 1)
    assert h.route_kinds()[c["cidr3"]] is THROW
    assert set(h.peers()) == {dst.key1}
    assert _step(dst, "route") == (4, 0, 1, 0)
    assert _step(dst, "endpoint") == (3, 0, 0, 0)


def test_endpoint_removed_then_restored(dst: Destinations) -> None:  # 47
    h, c = dst.h, dst.c
    h.manager.endpoint_remove("peer2")
    h.manager.apply()
    assert h.route_kinds()[c["cidr3"]] is THROW
    assert set(h.peers()) == {dst.key1}
    h.manager.endpoint_update("peer2", h.ip("1.2.3.6"))
    h.manager.apply()
    assert h.route_kinds()[c["cidr3"]] is DEVICE
    assert set(h.peers()) == {dst.key1, dst.key2}
    assert h.allowed(dst.key2) == {c["cidr3"]}


def test_endpoint_remove_and_restore_in_one_apply(dst: Destinations) -> None:  # 48
    h = dst.h
    h.manager.endpoint_remove("peer2")
    h.manager.endpoint_update("peer2", h.ip("1.2.3.6"))
    h.manager.apply()
    d = dst.diff()
    assert len(h.manager.nodes) == 4
    assert (d.route_add, d.route_update, d.route_delete) == (0, 0, 0)
    assert dst.wg_changes() == 0
    assert len(h.peers()) == 2


def test_endpoint_moved_in_one_apply(dst: Destinations) -> None:  # 49
    h = dst.h
    h.manager.endpoint_remove("peer2")
    h.manager.endpoint_update("peer2", h.ip("1.2.3.7"))
    h.manager.apply()
    d = dst.diff()
    assert (d.route_add, d.route_update, d.route_delete) == (0, 0, 0)
    assert dst.wg_changes() == 1
    assert h.peers()[dst.key2].endpoint == h.endpoint("1.2.3.7")


def test_peer_removed_and_cidr_goes_local(dst: Destinations) -> None:  # 50
    h, c = dst.h, dst.c
    h.manager.endpoint_remove("peer2")
    h.manager.endpoint_wireguard_remove("peer2")
    h.manager.route_update("my-host", c["cidr3"])
    h.manager.apply()
    d = dst.diff()
    assert d.route_delete == 0
    assert h.route_kinds()[c["cidr3"]] is THROW
    dst.mark()
    h.manager.route_remove(c["cidr3"])
    h.manager.apply()
    d = dst.diff()
    assert (d.route_add, d.route_delete) == (0, 1)
    dst.mark()
    h.manager.route_update("peer1", c["cidr3"])
    h.manager.apply()
    d = dst.diff()
    assert d.route_add == 1
    assert h.route_kinds()[c["cidr3"]] is DEVICE


def test_cidrs_move_between_peers(dst: Destinations) -> None:  # 51
    h, c = dst.h, dst.c
    h.manager.route_update("peer2", c["cidr2"])
    h.manager.route_update("peer3", c["cidr3"])
    h.manager.apply()
    assert h.allowed(dst.key1) == {c["cidr1"]}
    assert h.allowed(dst.key2) == {c["cidr2"]}
    d = dst.diff()
    assert (d.route_update, d.route_delete) == (1, 0)
    assert h.route_kinds()[c["cidr3"]] is THROW


def test_keyless_peer_gets_key(dst: Destinations) -> None:  # 52
    h, c = dst.h, dst.c
    h.manager.endpoint_wireguard_update("peer3", dst.key3, None)
    h.manager.apply()
    peers = h.peers()
    assert peers[dst.key3].endpoint == h.endpoint("10.10.20.20")
    assert h.allowed(dst.key3) == {c["cidr4"]}
    assert h.allowed(dst.key1) == {c["cidr1"], c["cidr2"]}
    assert h.allowed(dst.key2) == {c["cidr3"]}
    d = dst.diff()
    assert (d.route_update, d.route_delete) == (1, 0)
    assert h.route_kinds()[c["cidr4"]] is DEVICE
