"""Doctor and agent agree whatever order the cluster changed in.

The agent learns the cluster change by change: the calculation flushes messages now and then, the
managers apply them at random points. `meshcrypt doctor` computes what the node should hold from the
final resources in one go (`ops.expected`). Random histories of Nodes, blocks, pools and workload
endpoints (the calculation's property-test events: shared keys, overlapping blocks, borrowed
addresses, host addresses, deletions) must end in the routes and peers the doctor expects, in both
families, with host encryption off and on. The CI failure that found a stale throw route of the
node's own tunnel address was this disagreement, caught by a real agent under load.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcrypt.calc import Calculator
from meshcrypt.fakes import FakeKernel
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.dataplane import Endpoint, RouteKind
from meshcrypt.model.errors import WaitingForLink
from meshcrypt.model.keys import Key
from meshcrypt.model.net import CIDR, IPFamily
from meshcrypt.ops.cluster import ClusterResources
from meshcrypt.ops.expected import expected_family
from meshcrypt.wireguard.dispatch import ManagerDispatch
from meshcrypt.wireguard.manager import WireguardManager
from tests.unit.calc.replay import LOCAL
from tests.unit.calc.test_properties import Event, World, events

IFACE = "wg-agent"

Programmed = tuple[dict[CIDR, RouteKind], dict[Key, tuple[Endpoint | None, frozenset[CIDR]]]]


class Node:
    """The agent's dataplane half for one family: a manager on its own fake kernel."""

    def __init__(self, config: FelixConfig, family: IPFamily) -> None:
        self.kernel = FakeKernel(immediate_link_up=True)
        self.config = dataclasses.replace(
            config.for_family(family, mtu=0), enabled=True, interface_name=IFACE
        )
        self.manager = WireguardManager(
            LOCAL,
            self.config,
            netlink=self.kernel.netlink_factory(),
            wireguard=self.kernel.wireguard_factory(),
            sysfs=self.kernel.sysfs,
            status_callback=lambda _key: None,
        )
        self.dispatch = ManagerDispatch(self.manager)

    def apply(self) -> None:
        for _ in range(3):
            try:
                self.manager.apply()
                return
            except WaitingForLink:
                continue
        raise AssertionError("the manager kept waiting for its link")

    def programmed(self) -> Programmed:
        routes = {
            r.dst: r.kind
            for r in self.kernel.routes_in(self.config.routing_table, self.config.family)
        }
        peers = {
            k: (p.endpoint, frozenset(p.allowed_ips))
            for k, p in self.kernel.device(IFACE).peers.items()
        }
        return routes, peers


def expected(config: FelixConfig, world: World, family: IPFamily) -> Programmed:
    cluster = ClusterResources(
        nodes=dict(world.on_node),
        blocks=dict(world.on_block),
        pools=dict(world.on_pool),
        workloads=dict(world.on_workload),
    )
    found = expected_family(LOCAL, config, cluster, family)
    routes = {dst: r.kind for dst, r in found.routes.items()}
    peers = {k: (p.endpoint, p.allowed_ips) for k, p in found.peers.items()}
    return routes, peers


@settings(max_examples=150, deadline=None)
@given(st.lists(events(), min_size=20, max_size=100), st.booleans())
def test_the_agent_ends_where_the_doctor_expects(
    script: list[Event | None], host_encryption: bool
) -> None:
    config = FelixConfig(
        wireguard_enabled=True,
        wireguard_enabled_v6=True,
        wireguard_host_encryption_enabled=host_encryption,
    )
    calc = Calculator(LOCAL)
    nodes = [Node(config, family) for family in IPFamily]
    world = World()
    for event in [*script, None]:
        if event is None:
            messages = calc.flush()
            for node in nodes:
                for msg in messages:
                    node.dispatch.on_update(msg)
                node.apply()
            continue
        method, name, value = event
        getattr(calc, method)(name, value)
        world.record(method, name, value)
    for node in nodes:
        assert node.programmed() == expected(config, world, node.config.family)
