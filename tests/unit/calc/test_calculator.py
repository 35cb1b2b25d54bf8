"""Calculator behaviour: dedup, removals, route sources and their combination, order of a flush."""

from __future__ import annotations

import pytest

from meshcrypt.calc import Calculator
from meshcrypt.model.messages import (
    DataplaneMessage,
    HostMetadataRemove,
    HostMetadataUpdate,
    RouteRemove,
    RouteType,
    RouteUpdate,
    WireguardEndpointRemove,
    WireguardEndpointUpdate,
    WireguardEndpointV6Remove,
    WireguardEndpointV6Update,
)
from tests.unit.calc.replay import LOCAL, block, key, node, pool, wep

N1 = node("n1", "10.0.0.1/24", "fd00::1/64", wg4="10.65.1.1", wg6="fd65::1:1", key4=key(1))
N2 = node("n2", "10.0.0.2/24", "fd00::2/64", wg4="10.65.2.1", key4=key(2), key6=key(3))

RW, LW = RouteType.REMOTE_WORKLOAD, RouteType.LOCAL_WORKLOAD


def routes(messages: list[DataplaneMessage]) -> dict[str, RouteUpdate]:
    return {m.dst: m for m in messages if isinstance(m, RouteUpdate)}


@pytest.fixture
def calc() -> Calculator:
    return Calculator(LOCAL)


# --- dedup ------------------------------------------------------------------------------------


def test_the_same_node_upserted_twice_emits_nothing_the_second_time(calc: Calculator) -> None:
    calc.on_node("n1", N1)
    assert calc.flush()
    calc.on_node(
        "n1", node("n1", "10.0.0.1/24", "fd00::1/64", wg4="10.65.1.1", wg6="fd65::1:1", key4=key(1))
    )
    assert calc.flush() == []


def test_changes_that_cancel_out_before_a_flush_emit_nothing(calc: Calculator) -> None:
    calc.on_node("n1", N1)
    calc.on_block("b1", block("10.65.1.0/26", "n1"))
    calc.flush()
    calc.on_node("n1", N2)
    calc.on_node("n1", N1)
    calc.on_block("b1", block("10.65.1.0/26", "n2"))
    calc.on_block("b1", None)
    calc.on_block("b1", block("10.65.1.0/26", "n1"))
    calc.on_workload("ns/a", wep("ns/a", "n1", "10.65.1.7/32"))
    calc.on_workload("ns/a", None)
    assert calc.flush() == []


def test_a_change_updates_only_what_it_changed(calc: Calculator) -> None:
    calc.on_node("n1", N1)
    calc.on_block("b1", block("10.65.1.0/26", "n1"))
    calc.flush()
    calc.on_node(
        "n1", node("n1", "10.0.0.1/24", "fd00::1/64", wg4="10.65.1.1", wg6="fd65::1:1", key4=key(9))
    )
    assert calc.flush() == [WireguardEndpointUpdate("n1", key(9).to_base64(), "10.65.1.1")]


# --- endpoints and host metadata ---------------------------------------------------------------


def test_key_removal_removes_the_endpoint_of_that_family_only(calc: Calculator) -> None:
    calc.on_node("n2", N2)
    calc.flush()
    calc.on_node("n2", node("n2", "10.0.0.2/24", "fd00::2/64", wg4="10.65.2.1", key6=key(3)))
    assert calc.flush() == [WireguardEndpointRemove("n2")]
    calc.on_node("n2", node("n2", "10.0.0.2/24", "fd00::2/64", wg4="10.65.2.1"))
    assert calc.flush() == [WireguardEndpointV6Remove("n2")]


def test_no_endpoint_remove_for_a_node_that_never_had_a_key(calc: Calculator) -> None:
    calc.on_node("n3", node("n3", "10.0.0.3/24"))
    calc.flush()
    assert calc.flush() == []
    calc.on_node("n3", None)
    assert calc.flush() == [RouteRemove("10.0.0.3/32"), HostMetadataRemove("n3")]


def test_node_delete_removes_everything_of_the_node(calc: Calculator) -> None:
    calc.on_node(
        "n1",
        node(
            "n1",
            "10.0.0.1/24",
            "fd00::1/64",
            addresses=("192.168.9.1",),
            wg4="10.65.1.1",
            wg6="fd65::1:1",
            key4=key(1),
            key6=key(2),
        ),
    )
    calc.on_block("b1", block("10.65.1.0/26", "n1"))
    calc.on_node("n2", N2)
    calc.flush()
    calc.on_node("n1", None)
    assert calc.flush() == [
        WireguardEndpointRemove("n1"),
        WireguardEndpointV6Remove("n1"),
        RouteRemove("10.0.0.1/32"),
        RouteRemove("10.65.1.1/32"),
        RouteRemove("192.168.9.1/32"),
        RouteRemove("fd00::1/128"),
        RouteRemove("fd65::1:1/128"),
        HostMetadataRemove("n1"),
        # The block is its own resource (IPAM releases it separately); it stays, with no node IP.
        RouteUpdate("10.65.1.0/26", RW, "n1", ""),
    ]


def test_host_metadata_falls_back_to_the_first_address_of_each_family(calc: Calculator) -> None:
    calc.on_node("n4", node("n4", addresses=("fd00::4", "192.168.1.4", "192.168.1.5")))
    messages = calc.flush()
    assert messages[0] == HostMetadataUpdate("n4", "192.168.1.4/32", "fd00::4/128")
    assert set(routes(messages)) == {"192.168.1.4/32", "192.168.1.5/32", "fd00::4/128"}
    assert routes(messages)["192.168.1.5/32"] == RouteUpdate(
        "192.168.1.5/32", RouteType.REMOTE_HOST, "n4", "192.168.1.4"
    )


def test_bgp_address_wins_over_addresses_and_all_are_host_routes(calc: Calculator) -> None:
    calc.on_node("n4", node("n4", "10.0.0.4/16", addresses=("192.168.1.4", "10.0.0.4")))
    messages = calc.flush()
    assert messages[0] == HostMetadataUpdate("n4", "10.0.0.4/16", "")
    assert set(routes(messages)) == {"10.0.0.4/32", "192.168.1.4/32"}


def test_a_node_losing_its_last_address_gets_a_host_metadata_remove(calc: Calculator) -> None:
    calc.on_node("n1", node("n1", "10.0.0.1/24", key4=key(1)))
    calc.flush()
    calc.on_node("n1", node("n1", key4=key(1)))
    assert calc.flush() == [RouteRemove("10.0.0.1/32"), HostMetadataRemove("n1")]


def test_node_address_change_updates_the_routes_that_name_the_node(calc: Calculator) -> None:
    calc.on_node("n1", N1)
    calc.on_block("b1", block("10.65.1.0/26", "n1"))
    calc.flush()
    calc.on_node(
        "n1",
        node("n1", "10.0.0.11/24", "fd00::1/64", wg4="10.65.1.1", wg6="fd65::1:1", key4=key(1)),
    )
    assert calc.flush() == [
        RouteRemove("10.0.0.1/32"),
        HostMetadataUpdate("n1", "10.0.0.11/24", "fd00::1/64"),
        RouteUpdate("10.0.0.11/32", RouteType.REMOTE_HOST, "n1", "10.0.0.11"),
        RouteUpdate("10.65.1.0/26", RW, "n1", "10.0.0.11"),
        RouteUpdate(
            "10.65.1.1/32", RouteType.REMOTE_TUNNEL, "n1", "10.0.0.11", tunnel_wireguard=True
        ),
    ]


def test_a_block_seen_before_its_node_gets_the_node_ip_when_the_node_arrives(
    calc: Calculator,
) -> None:
    calc.on_block("b1", block("10.65.1.0/26", "n1"))
    assert calc.flush() == [RouteUpdate("10.65.1.0/26", RW, "n1", "")]
    calc.on_node("n1", node("n1", "10.0.0.1/24"))
    assert routes(calc.flush())["10.65.1.0/26"] == RouteUpdate("10.65.1.0/26", RW, "n1", "10.0.0.1")


# --- blocks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cidr", "ip"), [("10.65.1.0/26", "10.0.0.1"), ("fd65::/122", "fd00::1")])
def test_block_types_local_and_remote(calc: Calculator, cidr: str, ip: str) -> None:
    calc.on_node(LOCAL, node(LOCAL, "10.0.0.1/24", "fd00::1/64"))
    calc.on_node("n2", N2)
    calc.flush()
    calc.on_block("mine", block(cidr, LOCAL))
    assert calc.flush() == [RouteUpdate(cidr, LW, LOCAL, ip)]
    calc.on_block("mine", block(cidr, "n2"))
    n2_ip = "10.0.0.2" if "." in ip else "fd00::2"
    assert calc.flush() == [RouteUpdate(cidr, RW, "n2", n2_ip)]


def test_block_affinity_moving_gives_one_update_with_the_new_node(calc: Calculator) -> None:
    calc.on_node("n1", N1)
    calc.on_node("n2", N2)
    calc.on_block("b", block("10.65.3.0/26", "n1"))
    calc.flush()
    calc.on_block("b", block("10.65.3.0/26", "n2"))
    assert calc.flush() == [RouteUpdate("10.65.3.0/26", RW, "n2", "10.0.0.2")]


def test_blocks_without_affinity_or_deleted_are_absent(calc: Calculator) -> None:
    calc.on_block("free", block("10.65.4.0/26", None))
    calc.on_block("gone", block("10.65.5.0/26", "n1", deleted=True))
    assert calc.flush() == []
    calc.on_block("b", block("10.65.6.0/26", "n1"))
    calc.flush()
    calc.on_block("b", block("10.65.6.0/26", "n1", deleted=True))
    assert calc.flush() == [RouteRemove("10.65.6.0/26")]
    calc.on_block("c", block("10.65.7.0/26", "n1"))
    calc.flush()
    calc.on_block("c", None)
    assert calc.flush() == [RouteRemove("10.65.7.0/26")]


# --- workload endpoints --------------------------------------------------------------------------


def test_workload_addresses_in_their_own_nodes_block_are_not_borrowed(calc: Calculator) -> None:
    calc.on_block("b1", block("10.65.1.0/26", LOCAL))
    calc.on_workload("ns/a", wep("ns/a", LOCAL, "10.65.1.5/32", "fd65::5/128"))
    got = routes(calc.flush())
    assert got["10.65.1.5/32"] == RouteUpdate("10.65.1.5/32", LW, LOCAL, "")
    assert got["fd65::5/128"] == RouteUpdate("fd65::5/128", LW, LOCAL, "")


@pytest.mark.parametrize(
    ("blk", "ip"), [("10.65.1.0/26", "10.65.1.5/32"), ("fd65::/122", "fd65::5/128")]
)
def test_borrowed_workload_address(calc: Calculator, blk: str, ip: str) -> None:
    calc.on_node("n2", N2)
    calc.on_block("b1", block(blk, "n1"))
    calc.on_workload("ns/a", wep("ns/a", "n2", ip))
    n2_ip = "10.0.0.2" if "." in ip else "fd00::2"
    assert routes(calc.flush())[ip] == RouteUpdate(ip, RW, "n2", n2_ip, borrowed=True)
    # The block's affinity moves to the endpoint's node: no longer borrowed.
    calc.on_block("b1", block(blk, "n2"))
    assert routes(calc.flush())[ip] == RouteUpdate(ip, RW, "n2", n2_ip)
    # A local endpoint borrowing from n2's block.
    calc.on_workload("ns/a", wep("ns/a", LOCAL, ip))
    assert calc.flush() == [RouteUpdate(ip, LW, LOCAL, "", borrowed=True)]


def test_an_endpoint_becomes_borrowed_when_a_foreign_block_appears_around_it(
    calc: Calculator,
) -> None:
    calc.on_workload("ns/a", wep("ns/a", "n2", "10.65.1.5/32"))
    assert calc.flush() == [RouteUpdate("10.65.1.5/32", RW, "n2", "")]
    calc.on_block("b1", block("10.65.1.0/26", "n1"))
    assert calc.flush() == [
        RouteUpdate("10.65.1.0/26", RW, "n1", ""),
        RouteUpdate("10.65.1.5/32", RW, "n2", "", borrowed=True),
    ]
    calc.on_block("b1", None)
    assert calc.flush() == [
        RouteRemove("10.65.1.0/26"),
        RouteUpdate("10.65.1.5/32", RW, "n2", ""),
    ]


def test_endpoint_moving_node_and_changing_addresses(calc: Calculator) -> None:
    calc.on_workload("ns/a", wep("ns/a", "n1", "10.65.1.5/32", "10.65.1.6/32"))
    calc.flush()
    calc.on_workload("ns/a", wep("ns/a", "n2", "10.65.1.6/32", "10.65.1.7/32"))
    assert calc.flush() == [
        RouteRemove("10.65.1.5/32"),
        RouteUpdate("10.65.1.6/32", RW, "n2", ""),
        RouteUpdate("10.65.1.7/32", RW, "n2", ""),
    ]


# --- several sources of one CIDR --------------------------------------------------------------------


@pytest.mark.parametrize("endpoint_goes_first", [True, False])
def test_a_cidr_with_two_sources_stays_until_both_are_gone(
    calc: Calculator, endpoint_goes_first: bool
) -> None:
    calc.on_node("n1", N1)
    calc.on_workload("ns/a", wep("ns/a", "n1", "10.65.1.1/32"))  # also n1's tunnel address
    assert routes(calc.flush())["10.65.1.1/32"] == RouteUpdate(
        "10.65.1.1/32", RW | RouteType.REMOTE_TUNNEL, "n1", "10.0.0.1", tunnel_wireguard=True
    )
    n1_without_tunnel = node("n1", "10.0.0.1/24", "fd00::1/64", wg6="fd65::1:1", key4=key(1))
    if endpoint_goes_first:
        calc.on_workload("ns/a", None)
        assert calc.flush() == [
            RouteUpdate(
                "10.65.1.1/32", RouteType.REMOTE_TUNNEL, "n1", "10.0.0.1", tunnel_wireguard=True
            )
        ]
        calc.on_node("n1", n1_without_tunnel)
    else:
        calc.on_node("n1", n1_without_tunnel)
        assert calc.flush() == [
            WireguardEndpointUpdate("n1", key(1).to_base64(), ""),
            RouteUpdate("10.65.1.1/32", RW, "n1", "10.0.0.1"),
        ]
        calc.on_workload("ns/a", None)
    assert RouteRemove("10.65.1.1/32") in calc.flush()


def test_the_most_specific_source_names_the_node(calc: Calculator) -> None:
    calc.on_node("n1", N1)
    calc.on_node("n2", N2)
    calc.on_block("b1", block("10.65.1.0/26", "n1"))
    # n2's endpoint claims n1's tunnel address and a /32 that is n2's own host address.
    calc.on_workload("ns/a", wep("ns/a", "n2", "10.65.1.1/32"))
    calc.on_workload("ns/b", wep("ns/b", "n1", "10.0.0.2/32"))
    got = routes(calc.flush())
    assert got["10.65.1.1/32"] == RouteUpdate(
        "10.65.1.1/32",
        RW | RouteType.REMOTE_TUNNEL,
        "n1",
        "10.0.0.1",
        borrowed=True,
        tunnel_wireguard=True,
    )  # tunnel beats endpoint
    assert got["10.0.0.2/32"] == RouteUpdate(
        "10.0.0.2/32", RW | RouteType.REMOTE_HOST, "n2", "10.0.0.2"
    )


def test_local_and_remote_bits_combine(calc: Calculator) -> None:
    calc.on_node(LOCAL, node(LOCAL, "10.0.0.9/24"))
    calc.on_workload("ns/a", wep("ns/a", "n1", "10.0.0.9/32"))
    assert calc.flush()[-1] == RouteUpdate(
        "10.0.0.9/32", RouteType.LOCAL_HOST | RW, LOCAL, "10.0.0.9"
    )


# --- pools -----------------------------------------------------------------------------------------


def test_a_pool_without_blocks_is_cidr_info_until_a_block_appears(calc: Calculator) -> None:
    calc.on_pool("default", pool("default", "10.65.0.0/16"))
    assert calc.flush() == [RouteUpdate("10.65.0.0/16", RouteType.CIDR_INFO)]
    calc.on_block("outside", block("10.99.0.0/26", "n1"))
    assert calc.flush() == [RouteUpdate("10.99.0.0/26", RW, "n1", "")]
    calc.on_block("b1", block("10.65.1.0/26", "n1"))
    assert calc.flush() == [RouteRemove("10.65.0.0/16"), RouteUpdate("10.65.1.0/26", RW, "n1", "")]
    calc.on_block("b1", block("10.65.1.0/26", None))  # affinity released: no known block left
    assert calc.flush() == [
        RouteRemove("10.65.1.0/26"),
        RouteUpdate("10.65.0.0/16", RouteType.CIDR_INFO),
    ]
    calc.on_pool("default", None)
    assert calc.flush() == [RouteRemove("10.65.0.0/16")]


def test_a_pool_created_after_its_blocks_has_no_route(calc: Calculator) -> None:
    calc.on_block("b1", block("fd65::/122", "n1"))
    calc.flush()
    calc.on_pool("v6", pool("v6", "fd65::/48"))
    assert calc.flush() == []
    calc.on_pool("v6", pool("v6", "fd66::/48"))  # the pool's CIDR changes; no block inside now
    assert calc.flush() == [RouteUpdate("fd66::/48", RouteType.CIDR_INFO)]


# --- order -----------------------------------------------------------------------------------------

_GROUP = {
    WireguardEndpointRemove: 0,
    WireguardEndpointV6Remove: 0,
    RouteRemove: 0,
    HostMetadataUpdate: 1,
    HostMetadataRemove: 1,
    WireguardEndpointUpdate: 2,
    WireguardEndpointV6Update: 2,
    RouteUpdate: 3,
}


def test_a_flush_is_ordered_removals_metadata_endpoints_routes(calc: Calculator) -> None:
    calc.on_node("n1", N1)
    calc.on_node("n3", node("n3", "10.0.0.3/24"))
    calc.on_block("b1", block("10.65.1.0/26", "n1"))
    calc.flush()
    # n1's key moves to n2 and n1's block goes to n2; n3 leaves.
    calc.on_node("n1", node("n1", "10.0.0.1/24", "fd00::1/64"))
    calc.on_node("n2", node("n2", "10.0.0.2/24", key4=key(1)))
    calc.on_node("n3", None)
    calc.on_block("b1", None)
    calc.on_block("b2", block("10.65.2.0/26", "n2"))
    messages = calc.flush()
    groups = [_GROUP[type(m)] for m in messages]
    assert groups == sorted(groups)
    assert set(groups) == {0, 1, 2, 3}
    assert messages.index(WireguardEndpointRemove("n1")) < messages.index(
        WireguardEndpointUpdate("n2", key(1).to_base64(), "")
    )


def test_output_does_not_depend_on_event_order() -> None:
    events: list[tuple[str, str, object]] = [
        ("on_node", "n1", N1),
        ("on_node", "n2", N2),
        ("on_block", "b1", block("10.65.1.0/26", "n1")),
        ("on_block", "b2", block("10.65.2.0/26", "n2")),
        ("on_workload", "ns/a", wep("ns/a", "n2", "10.65.1.9/32")),
        ("on_pool", "p", pool("p", "10.66.0.0/16")),
    ]
    outputs = []
    for ordering in (events, events[::-1], events[2:] + events[:2]):
        calc = Calculator(LOCAL)
        for method, name, value in ordering:
            getattr(calc, method)(name, value)
        outputs.append(calc.flush())
    assert len(outputs[0]) == 16  # 2 hosts, 3 endpoints, 11 routes
    assert outputs[0] == outputs[1] == outputs[2]


def test_snapshot_is_what_was_flushed_in_flush_order(calc: Calculator) -> None:
    calc.on_node("n1", N1)
    calc.on_node("n2", N2)
    calc.on_block("b1", block("10.65.1.0/26", "n1"))
    first = calc.flush()
    assert calc.snapshot() == first
    calc.on_node("n2", None)
    calc.flush()
    calc.on_block("b9", block("10.65.9.0/26", "n1"))  # not flushed yet: not in the snapshot
    snapshot = calc.snapshot()
    assert snapshot == [
        m
        for m in first
        if getattr(m, "hostname", "n1") == "n1" and getattr(m, "dst_node_name", "n1") == "n1"
    ]
