"""A node of a small cluster, programmed on a fake kernel the way the agent programs it.

Cluster (per family): node `a` is this node; `b` publishes a key; `c` publishes none. Each node `i`
has the address 10.99.0.<i+1>/24, the block 10.65.<i>.0/26 and the tunnel address 10.65.<i>.1
(IPv6: fd00:99::<i+1>/64, fd00:65:<i>::/122, fd00:65:<i>::1). The real `Calculator`, `ManagerDispatch`
and `WireguardManager` program `a`'s `FakeKernel`; the operator reports then read that kernel through
the same ports the commands use.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from meshcrypt.calc import Calculator
from meshcrypt.fakes import FakeKernel
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import IPFamily
from meshcrypt.model.resources import IPAMBlockResource, NodeResource
from meshcrypt.ops.cluster import ClusterResources
from meshcrypt.ops.config_view import ConfigInputs, EffectiveConfig, effective_config
from meshcrypt.ops.doctor import DoctorInputs, DoctorReport, run_checks
from meshcrypt.ops.observe import FamilyObservation, observe_family
from meshcrypt.ops.status import StatusReport, build_status
from meshcrypt.wireguard.dispatch import ManagerDispatch
from meshcrypt.wireguard.manager import WireguardManager

HOST = "a"
IFACE = {IPFamily.V4: "wireguard.cali", IPFamily.V6: "wg-v6.cali"}
ENABLED = {IPFamily.V4: "wireguardEnabled", IPFamily.V6: "wireguardEnabledV6"}
NAMES = ("a", "b", "c")
NOW = 1_800_000_000.0


def new_key() -> Key:
    return PrivateKey.generate().public_key()


def address(family: IPFamily, i: int) -> str:
    return f"10.99.0.{i + 1}/24" if family is IPFamily.V4 else f"fd00:99::{i + 1}/64"


def block(family: IPFamily, i: int) -> str:
    return f"10.65.{i}.0/26" if family is IPFamily.V4 else f"fd00:65:{i}::/122"


def tunnel(family: IPFamily, i: int) -> str:
    return f"10.65.{i}.1" if family is IPFamily.V4 else f"fd00:65:{i}::1"


def make_node(family: IPFamily, i: int, key: Key | None) -> NodeResource:
    name = NAMES[i] if i < len(NAMES) else f"n{i}"
    if family is IPFamily.V4:
        return NodeResource(
            name,
            ipv4_address=ipaddress.IPv4Interface(address(family, i)),
            wireguard_ipv4=ipaddress.IPv4Address(tunnel(family, i)),
            public_key=key,
        )
    return NodeResource(
        name,
        ipv6_address=ipaddress.IPv6Interface(address(family, i)),
        wireguard_ipv6=ipaddress.IPv6Address(tunnel(family, i)),
        public_key_v6=key,
    )


class Scenario:
    def __init__(self, family: IPFamily = IPFamily.V4, **spec: object) -> None:
        self.family = family
        self.spec: dict[str, object] = {ENABLED[family]: True, **spec}
        self.kernel = FakeKernel(immediate_link_up=True)
        self.kernel.add_link("eth0", mtu=1500, up=True)
        self.published: list[Key] = []
        self.b_key = new_key()
        self.cluster = ClusterResources()
        self.calc = Calculator(HOST)
        self.manager = WireguardManager(
            HOST,
            self.config().config.for_family(family),
            netlink=self.kernel.netlink_factory(),
            wireguard=self.kernel.wireguard_factory(),
            sysfs=self.kernel.sysfs,
            status_callback=self.published.append,
        )
        self.dispatch = ManagerDispatch(self.manager)
        self.manager.apply()  # creates the device and publishes its key
        for i, key in enumerate((self.published[-1], self.b_key, None)):
            self.set_node(make_node(family, i, key))
            cidr = ipaddress.ip_network(block(family, i))
            self.set_block(IPAMBlockResource(cidr, NAMES[i]))
        self.sync()

    # -- the datastore, as the agent sees it ------------------------------------------------------

    def config(self, environ: dict[str, str] | None = None) -> EffectiveConfig:
        return effective_config(self.inputs(environ))

    def inputs(self, environ: dict[str, str] | None = None) -> ConfigInputs:
        return ConfigInputs(node=HOST, default_spec=self.spec, environ=environ or {})

    def set_node(self, node: NodeResource) -> None:
        self.cluster.nodes[node.name] = node
        self.calc.on_node(node.name, node)

    def set_block(self, blk: IPAMBlockResource) -> None:
        self.cluster.blocks[str(blk.cidr)] = blk
        self.calc.on_block(str(blk.cidr), blk)

    def sync(self) -> None:
        """What the agent does after a datastore change: feed the manager and apply."""
        for msg in self.calc.flush():
            self.dispatch.on_update(msg)
        self.manager.apply()

    def publish_in_datastore_only(self, node: NodeResource) -> None:
        """Change a Node in the datastore without the agent reacting (yet)."""
        self.cluster.nodes[node.name] = node

    # -- the reports ------------------------------------------------------------------------------

    def observations(self) -> list[FamilyObservation]:
        config = self.config().config
        return [
            observe_family(
                self.kernel.new_netlink_client(),
                lambda _link: self.kernel.new_wireguard_client(),
                fam,
                config.for_family(fam).interface_name,
                config.routing_table_index,
            )
            for fam in IPFamily
        ]

    def doctor(self, *, cluster: bool = True, **changes: object) -> DoctorReport:
        inputs = DoctorInputs(
            node=HOST,
            config=self.config(),
            observations=self.observations(),
            cluster=self.cluster if cluster else None,
            endpoints=("http://etcd:2379",),
            datastore_error=None if cluster else "connection refused",
            links=self.kernel.links(),
        )
        return run_checks(dataclasses.replace(inputs, **changes))  # type: ignore[arg-type]

    def status(self, *, cluster: bool = True) -> StatusReport:
        return build_status(
            HOST,
            config=self.config(),
            observations=self.observations(),
            cluster=self.cluster if cluster else None,
            endpoints=("http://etcd:2379",),
            datastore_error=None if cluster else "connection refused",
            now=NOW,
        )
