"""Read-only access for the operator commands: every link of a namespace, and the WireGuard client
that can read a given device.

`InspectNetlink` is `RtNetlink` plus `links()` (a link dump, for the MTU check). `open_wireguard`
picks the configuration interface by the link's kind: a `wireguard` link is the kernel module
(generic netlink), a `tun` link is wireguard-go (its UAPI socket in `socket_dir`, which inside a
simulated node's mount namespace is `/var/run/wireguard`, and from the host
`/proc/<holder>/root/run/wireguard`).
"""

from __future__ import annotations

from meshcrypt.adapters import rtnetlink as rt
from meshcrypt.adapters.netlink import RtNetlink
from meshcrypt.adapters.wireguard_genl import GenlWireguard
from meshcrypt.adapters.wireguard_uapi import DEFAULT_SOCKET_DIR, UapiWireguardDevices
from meshcrypt.model.dataplane import Link
from meshcrypt.ports import WireguardDevices

USERSPACE_LINK_KIND = "tun"


class InspectNetlink(RtNetlink):
    """`RtNetlink` that can also list every link of its namespace."""

    def links(self) -> list[Link]:
        body = rt.ifinfomsg() + rt.attr_u32(rt.IFLA_EXT_MASK, rt.RTEXT_FILTER_SKIP_STATS)
        return self._dump(rt.RTM_GETLINK, body, "list links", rt.RTM_NEWLINK, rt.decode_link)


def open_wireguard(
    link: Link, *, netns: str | None = None, socket_dir: str = DEFAULT_SOCKET_DIR
) -> WireguardDevices:
    """The client that reads `link`: wireguard-go's UAPI for a TUN device, else the kernel's."""
    if link.kind == USERSPACE_LINK_KIND:
        return UapiWireguardDevices(socket_dir=socket_dir, timeout=10.0)
    return GenlWireguard(netns=netns)
