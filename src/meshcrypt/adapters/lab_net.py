"""Namespaces, links, addresses, routes and sysctls of the lab, through `ip` (batched per namespace).

The lab's network, all of it created here and removed by `delete_*`:

    root namespace    bridge <prefix>0 (192.168.50.1/24, fd00:50::1/64)   nft table inet <prefix>
                        │ <prefix>-n1 … (host ends of the underlay veths)
    node namespace    eth0 (192.168.50.11/24, default via .1)    cali<11 hex> per pod, proxy_arp
                                                                    │
    pod namespace                                                 eth0 (/32, default via 169.254.1.1)

Commands run in batches (`ip -n <ns> -batch -`): one process per namespace and step instead of one
per address or route. Interface names always follow the `name` keyword (`ip link add a …` would
read `a` as `address`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshcrypt.adapters.netns import open_in_netns
from meshcrypt.adapters.nodens import NodeCommandError, run_command
from meshcrypt.model.errors import MeshcryptError
from meshcrypt.model.net import IPAddress

log = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"
#: Calico's pod gateway: a link-local IPv4 address answered by proxy ARP on the host end.
POD_GATEWAY_V4 = "169.254.1.1"
#: Calico gives every host end this MAC, so the pod's IPv6 gateway is its EUI-64 link-local address.
CALI_MAC = "ee:ee:ee:ee:ee:ee"
POD_GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"
#: Routes the lab installs the way BIRD does for Calico (`proto bird`).
PROTO_BIRD = "12"

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def ip_batch(lines: Iterable[str], netns: str | None = None) -> None:
    """Run `ip` commands (one per line, without the leading `ip`) in `netns` (None: ours)."""
    text = "".join(f"{line}\n" for line in lines)
    if not text:
        return
    cmd = ["ip", *(("-n", netns) if netns else ()), "-batch", "-"]
    run_command(cmd, input=text)


def _nodad(address: Interface | IPAddress) -> str:
    # The lab's addresses are unique by construction: duplicate address detection would only
    # leave them "tentative" (unusable) for a second.
    return " nodad" if address.version == 6 else ""


def set_sysctls(netns: str, values: Mapping[str, str]) -> None:
    """Write sysctls inside `netns`; keys are paths below /proc/sys (`net/ipv4/ip_forward`).

    One `sh` in the namespace writes them all (no dependency on procps' `sysctl`).
    """
    if not values:
        return
    script = 'for kv in "$@"; do printf %s "${kv#*=}" > "/proc/sys/${kv%%=*}" || exit 1; done'
    args = [f"{key}={value}" for key, value in values.items()]
    run_command(["ip", "netns", "exec", netns, "sh", "-c", script, "sysctl", *args])


# ---- the underlay --------------------------------------------------------------------------------


def create_bridge(name: str, addresses: Sequence[Interface]) -> None:
    """The lab's bridge in our namespace, addressed and up (IPv6 becomes usable once a port has
    carrier: the bridge has none while it has no port)."""
    lines = [f"link add name {name} type bridge"]
    lines += [f"addr add {a} dev {name}{_nodad(a)}" for a in addresses]
    lines.append(f"link set dev {name} up")
    ip_batch(lines)


def attach_node(
    netns: str,
    host_ifname: str,
    bridge: str,
    addresses: Sequence[Interface],
    gateways: Sequence[IPAddress],
) -> None:
    """A veth from the bridge (`host_ifname`) to `eth0` in the node, addressed, with default routes."""
    ip_batch(
        [
            f"link add name {host_ifname} type veth peer name eth0 netns {netns}",
            f"link set dev {host_ifname} master {bridge}",
            f"link set dev {host_ifname} up",
        ]
    )
    lines = [f"addr add {a} dev eth0{_nodad(a)}" for a in addresses]
    lines.append("link set dev eth0 up")
    lines += [f"route add default via {gw} dev eth0" for gw in gateways]
    ip_batch(lines, netns)


# ---- pods ----------------------------------------------------------------------------------------


def create_netns(name: str) -> None:
    ip_batch([f"netns add {name}"])
    ip_batch(["link set dev lo up"], name)


def attach_pod(
    node_netns: str,
    pod_netns: str,
    host_ifname: str,
    addresses: Sequence[IPAddress],
    mtu: int | None = None,
) -> None:
    """Wire a pod as Calico's CNI plugin does: a veth `host_ifname` (node) ↔ `eth0` (pod), both
    ends at `mtu` (the tunnel's MTU) when given, the pod's /32 (/128) on eth0 with routes via the
    link-local gateway, proxy ARP on the host end and a /32 (/128) route to the pod in the node."""
    with_mtu = f" mtu {mtu}" if mtu is not None else ""
    ip_batch(
        [
            f"link add name {host_ifname} netns {node_netns}{with_mtu} type veth"
            f" peer name eth0 netns {pod_netns}{with_mtu}"
        ]
    )
    set_sysctls(
        node_netns,
        {
            f"net/ipv4/conf/{host_ifname}/proxy_arp": "1",
            # Answer ARP at once rather than after up to 0.8 s (proxy_delay), as Calico does.
            f"net/ipv4/neigh/{host_ifname}/proxy_delay": "0",
        },
    )
    node_lines = [
        f"link set dev {host_ifname} address {CALI_MAC}",
        f"link set dev {host_ifname} up",
    ]
    node_lines += [
        f"route add {a}/{a.max_prefixlen} dev {host_ifname} scope link" for a in addresses
    ]
    ip_batch(node_lines, node_netns)
    pod_lines = [f"addr add {a}/{a.max_prefixlen} dev eth0{_nodad(a)}" for a in addresses]
    pod_lines.append("link set dev eth0 up")
    if any(a.version == 4 for a in addresses):
        pod_lines += [
            f"route add {POD_GATEWAY_V4} dev eth0 scope link",
            f"route add default via {POD_GATEWAY_V4} dev eth0",
        ]
    if any(a.version == 6 for a in addresses):
        pod_lines.append(f"route add default via {POD_GATEWAY_V6} dev eth0")
    ip_batch(pod_lines, pod_netns)


@dataclass(frozen=True, slots=True)
class BirdRoute:
    """A route BIRD would program for Calico: to a remote block via that node, or a blackhole for
    the node's own block."""

    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    via: IPAddress | None = None  # None: blackhole

    def line(self) -> str:
        if self.via is None:
            return f"route add blackhole {self.dst} proto {PROTO_BIRD}"
        return f"route add {self.dst} via {self.via} dev eth0 proto {PROTO_BIRD}"


def add_routes(netns: str, routes: Iterable[BirdRoute]) -> None:
    ip_batch((r.line() for r in routes), netns)


# ---- keeping traffic in the lab ------------------------------------------------------------------


def install_forward_guard(table: str, bridge: str) -> None:
    """An nftables table that stops the host from routing anything into or out of the lab's bridge
    (bridged traffic between nodes, which has the bridge on both sides, passes). The nodes' default
    route points at the host, so without it a host with ip_forward=1 would forward their stray
    traffic to the outside world."""
    rules = (
        f"table inet {table} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter - 10; policy accept;\n"
        f'    iifname "{bridge}" oifname != "{bridge}" counter drop\n'
        f'    oifname "{bridge}" iifname != "{bridge}" counter drop\n'
        "  }\n"
        "}\n"
    )
    run_command(["nft", "-f", "-"], input=rules)


def guard_exists(table: str) -> bool:
    try:
        out = run_command(["nft", "list", "tables", "inet"])
    except (NodeCommandError, OSError):
        return False
    return f"table inet {table}" in out.splitlines()


def remove_forward_guard(table: str) -> None:
    if guard_exists(table):
        run_command(["nft", "delete", "table", "inet", table])


def host_forwarding() -> bool:
    """Whether this namespace routes IPv4 between interfaces (net.ipv4.ip_forward)."""
    try:
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        return False


# ---- finding and removing ------------------------------------------------------------------------


def netns_names(prefix: str) -> list[str]:
    """The named network namespaces whose name starts with `prefix`."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def link_names() -> list[str]:
    """Every link of our namespace (veth names without their `@peer` suffix)."""
    out = run_command(["ip", "-o", "link", "show"])
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().partition("@")[0])
    return names


def delete_link(name: str) -> None:
    run_command(["ip", "link", "delete", "dev", name], check=False)


def delete_netns(name: str) -> None:
    """`ip netns delete`, and if its mount point is still there, a lazy unmount and unlink."""
    run_command(["ip", "netns", "delete", name], check=False)
    path = os.path.join(NETNS_DIR, name)
    if os.path.lexists(path):
        run_command(["umount", "--lazy", path], check=False)
        try:
            os.unlink(path)
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc)


def mounts_containing(text: str) -> list[str]:
    """Lines of /proc/mounts (our mount namespace) that mention `text`."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    return [line for line in lines if text in line]


def addresses_in_use() -> list[tuple[str, Interface]]:
    """(link, address) of every address in our namespace."""
    out = run_command(["ip", "-o", "addr", "show"])
    found: list[tuple[str, Interface]] = []
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 4 and words[2] in ("inet", "inet6"):
            found.append((words[1], ipaddress.ip_interface(words[3])))
    return found


def http_status_in_netns(netns: str, port: int, path: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of ``GET http://127.0.0.1:<port><path>`` made inside `netns` (an agent's
    health endpoint listens on the node's own loopback); None when nothing answers."""
    try:
        sock = open_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM, 0)
    except MeshcryptError:
        return None
    with sock:
        try:
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = sock.recv(64).decode("latin-1")
        except OSError:
            return None
    words = head.split()
    return int(words[1]) if len(words) >= 2 and words[1].isdigit() else None
