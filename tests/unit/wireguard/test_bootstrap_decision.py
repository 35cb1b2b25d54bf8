"""meshcrypt.wireguard.bootstrap: the pure start-up decision (reference §4.2, adapted to etcd)."""

from __future__ import annotations

import ipaddress

import pytest

from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import IPFamily
from meshcrypt.model.resources import NodeResource
from meshcrypt.wireguard.bootstrap import (
    Action,
    BootstrapFacts,
    EndpointVerdict,
    FamilyFacts,
    KernelWireguardState,
    Reason,
    address_index,
    decide,
    endpoint_ip,
    watchdog_families,
)

V4, V6 = IPFamily.V4, IPFamily.V6


def key() -> Key:
    return PrivateKey.generate().public_key()


OURS, K2, K3, STALE = key(), key(), key(), key()


def node(
    name: str, n: int, k4: Key | None = None, *extra: str, k6: Key | None = None
) -> NodeResource:
    return NodeResource(
        name=name,
        ipv4_address=ipaddress.IPv4Interface(f"10.0.0.{n}/24"),
        ipv6_address=ipaddress.IPv6Interface(f"fd00::{n}/64"),
        addresses=tuple(ipaddress.ip_address(a) for a in extra),
        public_key=k4,
        public_key_v6=k6,
    )


NODES = {
    "node1": node("node1", 1, OURS),
    "node2": node("node2", 2, K2, "192.168.7.2"),
    "node3": node("node3", 3),
}
KERNEL = KernelWireguardState(True, OURS, frozenset({K2}))


def facts(
    endpoints: tuple[str, ...],
    *,
    kernel: KernelWireguardState = KERNEL,
    nodes: dict[str, NodeResource] | None = None,
    host_encryption: bool = True,
    enabled: bool = True,
    iface: str = "wireguard.cali",
) -> BootstrapFacts:
    return BootstrapFacts(
        node_name="node1",
        host_encryption=host_encryption,
        families=(FamilyFacts(V4, enabled, iface, kernel),),
        endpoints=endpoints,
        nodes=NODES if nodes is None else nodes,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://10.0.0.1:2379", "10.0.0.1"),
        ("https://10.0.0.1:2379/", "10.0.0.1"),
        ("http://[fd00::1]:2379", "fd00::1"),
        ("10.0.0.1:2379", "10.0.0.1"),
        ("http://etcd.example:2379", None),
        ("http://[fd00::1:2379", None),
        ("", None),
    ],
)
def test_endpoint_ip(text, expected):
    found = endpoint_ip(text)
    assert (str(found) if found is not None else None) == expected


def test_nodes_are_found_by_bgp_host_and_tunnel_addresses():
    tunnel = NodeResource("node4", wireguard_ipv4=ipaddress.IPv4Address("10.65.0.1"))
    index = address_index([*NODES.values(), tunnel])
    assert index[ipaddress.ip_address("10.0.0.2")] == {"node2"}
    assert index[ipaddress.ip_address("fd00::2")] == {"node2"}
    assert index[ipaddress.ip_address("192.168.7.2")] == {"node2"}
    assert index[ipaddress.ip_address("10.65.0.1")] == {"node4"}


def test_every_verdict_of_the_endpoint_filter():
    shared = node("dup", 9, K3)
    twin = node("twin", 9, K3)
    endpoints = (
        "http://10.0.0.1:2379",  # local node
        "http://127.0.0.1:2379",  # loopback
        "http://10.0.0.2:2379",  # key in kernel
        "http://192.168.7.2:2379",  # same node, found through spec.addresses
        "http://10.0.0.3:2379",  # no key
        "http://10.0.0.99:2379",  # no node
        "http://10.0.0.9:2379",  # two nodes claim it
        "http://etcd.example:2379",  # a DNS name: not examined
    )
    nodes = {**NODES, "dup": shared, "twin": twin}
    decision = decide(facts(endpoints, nodes=nodes))
    family = decision.family(V4)
    assert (family.action, family.reason) == (Action.KEEP, Reason.KEY_MATCHES)
    assert [(n.endpoint, n.verdict, n.node) for n in family.notes] == [
        ("http://10.0.0.1:2379", EndpointVerdict.LOCAL, "node1"),
        ("http://127.0.0.1:2379", EndpointVerdict.LOCAL, "node1"),
        ("http://10.0.0.2:2379", EndpointVerdict.KEY_IN_KERNEL, "node2"),
        ("http://192.168.7.2:2379", EndpointVerdict.KEY_IN_KERNEL, "node2"),
        ("http://10.0.0.3:2379", EndpointVerdict.NO_KEY, "node3"),
        ("http://10.0.0.99:2379", EndpointVerdict.UNKNOWN_HOST, None),
        ("http://10.0.0.9:2379", EndpointVerdict.AMBIGUOUS, None),
    ]
    assert decision.endpoints == endpoints
    assert decision.dropped == ()


def test_an_endpoint_on_a_node_whose_key_we_do_not_hold_is_dropped_in_order():
    nodes = {**NODES, "node2": node("node2", 2, STALE)}
    endpoints = ("http://10.0.0.3:2379", "http://10.0.0.2:2379", "http://10.0.0.1:2379")
    decision = decide(facts(endpoints, nodes=nodes))
    assert decision.family(V4).action is Action.KEEP
    assert decision.endpoints == ("http://10.0.0.3:2379", "http://10.0.0.1:2379")
    assert decision.dropped == ("http://10.0.0.2:2379",)
    assert decision.removals == ()


def test_when_every_endpoint_would_be_dropped_wireguard_goes_and_all_are_kept():
    nodes = {**NODES, "node2": node("node2", 2, STALE)}
    decision = decide(facts(("http://10.0.0.2:2379",), nodes=nodes))
    family = decision.family(V4)
    assert (family.action, family.reason) == (Action.REMOVE, Reason.NO_USABLE_ENDPOINT)
    assert family.delete_device
    assert decision.endpoints == ("http://10.0.0.2:2379",)


def test_a_dns_name_alone_is_not_a_reason_to_remove():
    decision = decide(facts(("http://etcd.example:2379",)))
    assert decision.family(V4).action is Action.KEEP
    assert decision.endpoints == ("http://etcd.example:2379",)


@pytest.mark.parametrize(
    ("kwargs", "action", "reason"),
    [
        ({"enabled": False}, Action.REMOVE, Reason.DISABLED),
        ({"iface": ""}, Action.REMOVE, Reason.DISABLED),
        ({"host_encryption": False}, Action.KEEP, Reason.HOST_ENCRYPTION_OFF),
        ({"kernel": KernelWireguardState()}, Action.REMOVE, Reason.NO_KERNEL_STATE),
        (
            {"kernel": KernelWireguardState(True, Key.zero(), frozenset({K2}))},
            Action.REMOVE,
            Reason.NO_KERNEL_STATE,
        ),
        (
            {"kernel": KernelWireguardState(True, OURS, frozenset())},
            Action.REMOVE,
            Reason.NO_KERNEL_STATE,
        ),
        (
            {"nodes": {**NODES, "node1": node("node1", 1, STALE)}},
            Action.REMOVE,
            Reason.KEY_MISMATCH,
        ),
        ({"nodes": {"node2": NODES["node2"]}}, Action.REMOVE, Reason.KEY_MISMATCH),
    ],
    ids=[
        "disabled",
        "no-interface-name",
        "host-encryption-off",
        "no-device",
        "zero-key",
        "no-peers",
        "published-key-differs",
        "no-own-node",
    ],
)
def test_steps_before_the_filter(kwargs, action, reason):
    endpoints = ("http://10.0.0.2:2379",)
    decision = decide(facts(endpoints, **kwargs))
    family = decision.family(V4)
    assert (family.action, family.reason) == (action, reason)
    assert family.notes == ()
    assert decision.endpoints == endpoints
    assert family.delete_device is (action is Action.REMOVE and kwargs.get("iface") != "")


def test_unreachable_datastore_keeps_everything_and_says_so():
    nodes_unknown = BootstrapFacts(
        node_name="node1",
        host_encryption=True,
        families=(FamilyFacts(V4, True, "wireguard.cali", KERNEL),),
        endpoints=("http://10.0.0.2:2379",),
        nodes=None,
    )
    decision = decide(nodes_unknown)
    assert decision.datastore_unknown
    family = decision.family(V4)
    assert (family.action, family.reason) == (Action.KEEP, Reason.PUBLISHED_KEY_UNKNOWN)
    assert decision.endpoints == ("http://10.0.0.2:2379",)


def test_families_filter_only_their_own_endpoints_and_order_is_kept():
    k6 = key()
    nodes = {"node1": node("node1", 1, OURS, k6=k6), "node2": node("node2", 2, K2, k6=STALE)}
    endpoints = ("http://[fd00::2]:2379", "http://10.0.0.2:2379", "http://[fd00::1]:2379")
    both = BootstrapFacts(
        node_name="node1",
        host_encryption=True,
        families=(
            FamilyFacts(V4, True, "wireguard.cali", KERNEL),
            FamilyFacts(V6, True, "wg-v6.cali", KernelWireguardState(True, k6, frozenset({K3}))),
        ),
        endpoints=endpoints,
        nodes=nodes,
    )
    decision = decide(both)
    assert [n.endpoint for n in decision.family(V4).notes] == ["http://10.0.0.2:2379"]
    assert decision.family(V6).dropped == ("http://[fd00::2]:2379",)
    assert decision.endpoints == ("http://10.0.0.2:2379", "http://[fd00::1]:2379")


def test_the_watchdog_acts_only_with_host_encryption_on_enabled_named_families():
    families = (
        FamilyFacts(V4, True, "wireguard.cali"),
        FamilyFacts(V6, False, "wg-v6.cali"),
    )
    assert watchdog_families(families, host_encryption=False) == ()
    assert watchdog_families(families, host_encryption=True) == (families[0],)
    assert watchdog_families((FamilyFacts(V4, True, ""),), host_encryption=True) == ()
