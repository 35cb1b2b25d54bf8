"""Calc graph scenarios of `reference-behavior.md` §5.11 (84–87), for IPv4, IPv6 and dual stack."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from meshcrypt.calc import Calculator
from meshcrypt.model.messages import (
    DataplaneMessage,
    HostMetadataUpdate,
    RouteRemove,
    RouteType,
    RouteUpdate,
    WireguardEndpointRemove,
    WireguardEndpointUpdate,
    WireguardEndpointV6Remove,
    WireguardEndpointV6Update,
)
from tests.unit.calc.replay import LOCAL, key, node


@dataclass(frozen=True)
class Stack:
    v4: bool
    v6: bool


STACKS = [Stack(True, False), Stack(False, True), Stack(True, True)]
STACK_IDS = ["v4", "v6", "dual"]

REMOTE_HOST_IP, REMOTE_HOST2_IP = "10.0.0.2", "10.0.0.3"
REMOTE_HOST_IP6, REMOTE_HOST2_IP6 = "dead:beef::2", "dead:beef::3"


@pytest.mark.parametrize("stack", STACKS, ids=STACK_IDS)
def test_remote_node_with_key_gives_host_tunnel_routes_metadata_and_endpoint(stack: Stack) -> None:
    # 84 (IPv4) and 85 (IPv6: /96 host address, /128 routes; dual stack: both sets)
    key1, key2 = key(1), key(2)
    calc = Calculator(LOCAL)
    calc.on_node(
        "remote",
        node(
            "remote",
            f"{REMOTE_HOST_IP}/24" if stack.v4 else None,
            f"{REMOTE_HOST_IP6}/96" if stack.v6 else None,
            wg4=REMOTE_HOST2_IP if stack.v4 else None,
            wg6=REMOTE_HOST2_IP6 if stack.v6 else None,
            key4=key1 if stack.v4 else None,
            key6=key2 if stack.v6 else None,
        ),
    )
    expected: list[DataplaneMessage] = [
        HostMetadataUpdate(
            "remote",
            ipv4_addr=f"{REMOTE_HOST_IP}/24" if stack.v4 else "",
            ipv6_addr=f"{REMOTE_HOST_IP6}/96" if stack.v6 else "",
        )
    ]
    if stack.v4:
        expected.append(WireguardEndpointUpdate("remote", key1.to_base64(), REMOTE_HOST2_IP))
    if stack.v6:
        expected.append(WireguardEndpointV6Update("remote", key2.to_base64(), REMOTE_HOST2_IP6))
    if stack.v4:
        expected += [
            RouteUpdate(f"{REMOTE_HOST_IP}/32", RouteType.REMOTE_HOST, "remote", REMOTE_HOST_IP),
            RouteUpdate(
                f"{REMOTE_HOST2_IP}/32",
                RouteType.REMOTE_TUNNEL,
                "remote",
                REMOTE_HOST_IP,
                tunnel_wireguard=True,
            ),
        ]
    if stack.v6:
        expected += [
            RouteUpdate(f"{REMOTE_HOST_IP6}/128", RouteType.REMOTE_HOST, "remote", REMOTE_HOST_IP6),
            RouteUpdate(
                f"{REMOTE_HOST2_IP6}/128",
                RouteType.REMOTE_TUNNEL,
                "remote",
                REMOTE_HOST_IP6,
                tunnel_wireguard=True,
            ),
        ]
    assert calc.flush() == expected


@pytest.mark.parametrize("stack", STACKS, ids=STACK_IDS)
def test_local_node_key_passes_through_and_its_deletion_removes_it(stack: Stack) -> None:
    # 86: the local node's own key and tunnel address reach the dataplane like any other node's.
    key1 = key(7)
    calc = Calculator(LOCAL)
    local = node(
        LOCAL,
        wg4="10.10.0.5" if stack.v4 else None,
        wg6="fd10::5" if stack.v6 else None,
        key4=key1 if stack.v4 else None,
        key6=key1 if stack.v6 else None,
    )
    calc.on_node(LOCAL, local)
    messages = calc.flush()
    endpoints = [m for m in messages if not isinstance(m, RouteUpdate)]
    expected_endpoints: list[DataplaneMessage] = []
    if stack.v4:
        expected_endpoints.append(WireguardEndpointUpdate(LOCAL, key1.to_base64(), "10.10.0.5"))
    if stack.v6:
        expected_endpoints.append(WireguardEndpointV6Update(LOCAL, key1.to_base64(), "fd10::5"))
    assert endpoints == expected_endpoints  # no address: no host metadata
    tunnel_routes = {m.dst: m.types for m in messages if isinstance(m, RouteUpdate)}
    assert set(tunnel_routes.values()) == {RouteType.LOCAL_TUNNEL}

    calc.on_node(LOCAL, None)
    removed = calc.flush()
    expected_removals: list[DataplaneMessage] = []
    if stack.v4:
        expected_removals.append(WireguardEndpointRemove(LOCAL))
    if stack.v6:
        expected_removals.append(WireguardEndpointV6Remove(LOCAL))
    expected_removals += [RouteRemove(dst) for dst in tunnel_routes]
    assert removed == expected_removals


@pytest.mark.parametrize(
    ("with_v4_key", "with_v6_key"), [(True, False), (False, True), (True, True), (False, False)]
)
def test_endpoint_per_family_only_where_the_node_has_a_key(
    with_v4_key: bool, with_v6_key: bool
) -> None:
    # 87, the calculation side: a family's endpoint exists exactly when that family's key is set;
    # the tunnel address rides along with it.
    calc = Calculator(LOCAL)
    calc.on_node(
        "n1",
        node(
            "n1",
            "10.0.0.2/24",
            "fd00::2/64",
            wg4="10.10.0.1",
            wg6="fd10::1",
            key4=key(1) if with_v4_key else None,
            key6=key(2) if with_v6_key else None,
        ),
    )
    messages = calc.flush()
    v4 = [m for m in messages if isinstance(m, WireguardEndpointUpdate)]
    v6 = [m for m in messages if isinstance(m, WireguardEndpointV6Update)]
    assert v4 == ([WireguardEndpointUpdate("n1", key(1).to_base64(), "10.10.0.1")] * with_v4_key)
    assert v6 == ([WireguardEndpointV6Update("n1", key(2).to_base64(), "fd10::1")] * with_v6_key)
    # Tunnel routes do not depend on the key (Felix's resolver reads the address alone).
    tunnels = {m.dst for m in messages if isinstance(m, RouteUpdate) and m.tunnel_wireguard}
    assert tunnels == {"10.10.0.1/32", "fd10::1/128"}
