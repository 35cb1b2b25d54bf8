"""What a lab is made of: its settings, and the names and addresses derived from them (pure).

Names (the prefix defaults to `mclab`; another prefix and underlay run a second lab beside the first):

| thing | name | example |
|---|---|---|
| bridge (root namespace) | `<prefix>0` | `mclab0`, 192.168.50.1/24, fd00:50::1/64 |
| node *i* | `node<i>`, netns `<prefix>-node<i>` | `node1`: eth0 192.168.50.11/24, fd00:50::11/64 |
| host end of node *i*'s underlay | `<prefix>-n<i>` | `mclab-n1` |
| pod *j* of node *i* | `node<i>-pod<j>`, netns `<prefix>-node<i>-pod<j>` | eth0 10.65.0.0/32 |
| pod's host end (in the node) | `cali` + 11 hex of sha1(`<namespace>.<pod>`), as Calico | `cali3f2a…` |
| nftables guard | table `inet <prefix>` | |

Node *i*'s underlay address is the bridge network's host `10+i`; in IPv6 written with the same digits
(`fd00:50::11`), so both families read alike.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import Final

from meshcrypt.model.errors import MeshcryptError
from meshcrypt.model.net import IPFamily

DEFAULT_DIR: Final = "/run/meshcrypt-lab"
DIR_ENV: Final = "MESHCRYPT_LAB_DIR"
#: For tests: the agent command (split on whitespace) instead of `<python> -m meshcrypt agent`.
AGENT_COMMAND_ENV: Final = "MESHCRYPT_LAB_AGENT_COMMAND"
DEFAULT_PREFIX: Final = "mclab"
DEFAULT_UNDERLAY_V4: Final = IPv4Network("192.168.50.0/24")
DEFAULT_UNDERLAY_V6: Final = IPv6Network("fd00:50::/64")
#: The IP pool of each family: name, CIDR, block size.
POOLS: Final[dict[IPFamily, tuple[str, IPv4Network | IPv6Network, int]]] = {
    IPFamily.V4: ("default-ipv4-ippool", IPv4Network("10.65.0.0/16"), 26),
    IPFamily.V6: ("default-ipv6-ippool", IPv6Network("fd00:65::/48"), 122),
}
ETCD_PORT: Final = 2379
POD_NAMESPACE: Final = "default"
BACKENDS: Final = ("auto", "kernel", "userspace")
WIREGUARD_IFACE: Final = {IPFamily.V4: "wireguard.cali", IPFamily.V6: "wg-v6.cali"}
MAX_NODES: Final = 200
#: The MTU of the lab's bridge and underlay veths (the kernel's default for both).
UNDERLAY_MTU: Final = 1500
#: WireGuard's encapsulation overhead per family (the agents' MTU auto-detection margins).
WIREGUARD_OVERHEAD: Final = {IPFamily.V4: 60, IPFamily.V6: 80}
_FIRST_HOST: Final = 10
_PREFIX_RE: Final = re.compile(r"[a-z][a-z0-9]{0,7}")


class LabError(MeshcryptError):
    """The lab cannot do what was asked; the message says why and what to do."""


def default_dir() -> str:
    return os.environ.get(DIR_ENV, "").strip() or DEFAULT_DIR


@dataclass(frozen=True, slots=True)
class LabConfig:
    nodes: int = 3
    pods_per_node: int = 2
    families: tuple[IPFamily, ...] = (IPFamily.V4,)
    host_encryption: bool = False
    backend: str = "userspace"
    agents: bool = True
    prefix: str = DEFAULT_PREFIX
    underlay_v4: IPv4Network = DEFAULT_UNDERLAY_V4
    underlay_v6: IPv6Network = DEFAULT_UNDERLAY_V6
    converge_timeout: float = 60.0

    def validate(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise LabError(
                f"prefix {self.prefix!r}: 1–8 lower-case letters and digits, starting with a letter"
            )
        if not 1 <= self.nodes <= MAX_NODES:
            raise LabError(f"--nodes {self.nodes}: between 1 and {MAX_NODES}")
        if not self.families:
            raise LabError("no IP family selected")
        for family in self.families:
            net = self.underlay(family)
            if net.num_addresses < _FIRST_HOST + self.nodes + 1:
                raise LabError(f"underlay {net} is too small for {self.nodes} nodes")
            _, pool, block = POOLS[family]
            room = 2 ** (family.host_prefixlen - block) - 1  # one address left for the tunnel
            if not 0 <= self.pods_per_node <= room:
                raise LabError(f"--pods-per-node {self.pods_per_node}: between 0 and {room}")
            if self.nodes > 2 ** (block - pool.prefixlen):
                raise LabError(f"pool {pool} has fewer than {self.nodes} blocks")
        if self.backend not in BACKENDS:
            raise LabError(f"--backend {self.backend}: one of {', '.join(BACKENDS)}")
        if self.converge_timeout <= 0:
            raise LabError("--timeout must be positive")

    def underlay(self, family: IPFamily) -> IPv4Network | IPv6Network:
        return self.underlay_v4 if family is IPFamily.V4 else self.underlay_v6

    @property
    def pod_mtu(self) -> int:
        """The pods' veth MTU, as Calico's CNI sets it: the tunnel's MTU, the underlay's minus the
        WireGuard overhead of the lab's largest family (1440 IPv4-only, 1420 with IPv6)."""
        return UNDERLAY_MTU - max(WIREGUARD_OVERHEAD[f] for f in self.families)

    # ---- names -----------------------------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return f"{self.prefix}0"

    @property
    def guard_table(self) -> str:
        return self.prefix

    @property
    def netns_prefix(self) -> str:
        return f"{self.prefix}-"

    def node_names(self) -> list[str]:
        return [node_name(i) for i in range(1, self.nodes + 1)]

    def netns(self, node_or_pod: str) -> str:
        return f"{self.prefix}-{node_or_pod}"

    def host_ifname(self, index: int) -> str:
        return f"{self.prefix}-n{index}"

    def is_host_ifname(self, name: str) -> bool:
        """A root-namespace link this lab creates: its bridge or a node's host end."""
        return name == self.bridge or re.fullmatch(rf"{self.prefix}-n\d+", name) is not None

    # ---- addresses -------------------------------------------------------------------------------

    def bridge_address(self, family: IPFamily) -> IPv4Interface | IPv6Interface:
        net = self.underlay(family)
        return ipaddress.ip_interface(f"{net.network_address + 1}/{net.prefixlen}")

    def node_address(self, family: IPFamily, index: int) -> IPv4Interface | IPv6Interface:
        net = self.underlay(family)
        host = _FIRST_HOST + index
        # IPv6: the decimal digits read as hex, so node1 is fd00:50::11 beside 192.168.50.11.
        offset = host if family is IPFamily.V4 else int(str(host), 16)
        return ipaddress.ip_interface(f"{net.network_address + offset}/{net.prefixlen}")

    def etcd_node_endpoint(self) -> str:
        """The URL agents in the nodes use: on the bridge, IPv4 when the lab has IPv4."""
        family = IPFamily.V4 if IPFamily.V4 in self.families else IPFamily.V6
        return url(self.bridge_address(family).ip, ETCD_PORT)

    # ---- (de)serialisation for the state file ----------------------------------------------------

    def to_json(self) -> dict[str, object]:
        return {
            "nodes": self.nodes,
            "pods_per_node": self.pods_per_node,
            "families": [f.value for f in self.families],
            "host_encryption": self.host_encryption,
            "backend": self.backend,
            "agents": self.agents,
            "prefix": self.prefix,
            "underlay_v4": str(self.underlay_v4),
            "underlay_v6": str(self.underlay_v6),
            "converge_timeout": self.converge_timeout,
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> LabConfig:
        """Raises LabError for a document `to_json` did not write."""
        try:
            families = doc["families"]
            assert isinstance(families, list)
            return cls(
                nodes=_int(doc["nodes"]),
                pods_per_node=_int(doc["pods_per_node"]),
                families=tuple(IPFamily(_int(f)) for f in families),
                host_encryption=bool(doc["host_encryption"]),
                backend=str(doc["backend"]),
                agents=bool(doc["agents"]),
                prefix=str(doc["prefix"]),
                underlay_v4=IPv4Network(str(doc["underlay_v4"])),
                underlay_v6=IPv6Network(str(doc["underlay_v6"])),
                converge_timeout=float(str(doc["converge_timeout"])),
            )
        except (KeyError, ValueError, TypeError, AssertionError) as exc:
            raise LabError(f"unreadable lab settings in the state file: {exc!r}") from exc


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, not {value!r}")
    return value


def node_name(index: int) -> str:
    return f"node{index}"


def pod_name(node: str, index: int) -> str:
    return f"{node}-pod{index}"


def cali_name(pod: str, namespace: str = POD_NAMESPACE) -> str:
    """The host end of a pod's veth, as Calico names it from the workload's `<namespace>.<pod>`."""
    return "cali" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


def url(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:{port}"
