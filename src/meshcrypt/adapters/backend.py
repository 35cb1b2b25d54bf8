"""WireGuard backend selection: the kernel module, or wireguard-go in userspace.

`auto` (the default) uses the kernel when a link of type `wireguard` can be created, and wireguard-go
otherwise. Either way the managers get a Netlink factory whose `link_add_wireguard` creates the device
the backend's way, a WireGuard client factory, and the link kind to expect (`wireguard` or `tun`).
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from meshcrypt.adapters.netlink import RtNetlink
from meshcrypt.adapters.wireguard_genl import GenlWireguard
from meshcrypt.adapters.wireguard_go import WireguardGoSupervisor
from meshcrypt.adapters.wireguard_uapi import UapiWireguardDevices
from meshcrypt.model.dataplane import Link
from meshcrypt.model.errors import ConfigError, KernelError, NotFound, NotSupported
from meshcrypt.ports import Netlink, NetlinkFactory, WireguardDevices, WireguardFactory

log = logging.getLogger(__name__)

BACKEND_ENV = "MESHCRYPT_WIREGUARD_BACKEND"


class BackendMode(enum.Enum):
    AUTO = "auto"
    KERNEL = "kernel"
    USERSPACE = "userspace"

    @classmethod
    def parse(cls, text: str) -> BackendMode:
        try:
            return cls(text.strip().lower() or "auto")
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ConfigError(BACKEND_ENV, text, f"expected one of {choices}") from None


@dataclass(frozen=True, slots=True)
class Backend:
    """What the managers need from a backend."""

    name: str  # "kernel" or "userspace"
    link_kind: str  # the link kind `ip -d link` reports for the device
    netlink: NetlinkFactory
    wireguard: WireguardFactory


class UserspaceNetlink(RtNetlink):
    """Netlink whose WireGuard links are wireguard-go processes (TUN devices) run by a supervisor."""

    def __init__(self, supervisor: WireguardGoSupervisor, netns: str | None = None) -> None:
        super().__init__(netns)
        self._supervisor = supervisor
        self._managed: dict[int, str] = {}

    def link_add_wireguard(self, name: str, mtu: int) -> None:
        self._supervisor.ensure_running(name, mtu)

    def link_by_name(self, name: str) -> Link | None:
        link = super().link_by_name(name)
        if link is not None:
            self._managed[link.index] = name
        return link

    def link_delete(self, index: int) -> None:
        name = self._managed.pop(index, None)
        if name is not None and self._supervisor.is_alive(name):
            # Stopping wireguard-go removes its TUN, and the supervisor reaps the process.
            self._supervisor.stop(name)
            return
        super().link_delete(index)


def _kernel_supported(netlink: Netlink, probe_name: str) -> bool:
    try:
        netlink.link_add_wireguard(probe_name, 0)
    except NotSupported:
        return False
    except KernelError as exc:
        log.warning("Probing for kernel WireGuard failed (%s); assuming it is not there", exc)
        return False
    try:
        link = netlink.link_by_name(probe_name)
        if link is not None:
            netlink.link_delete(link.index)
    except NotFound:
        pass
    return True


def select_backend(
    mode: BackendMode,
    *,
    interfaces: Sequence[str],
    supervisor: WireguardGoSupervisor | None = None,
    netns: str | None = None,
) -> Backend:
    """Pick the backend. In `auto` mode an existing wireguard-go device of ours is adopted."""
    if mode is BackendMode.AUTO:
        with RtNetlink(netns) as probe:
            links = [probe.link_by_name(name) for name in interfaces]
            kinds = {link.kind for link in links if link is not None}
            if "tun" in kinds:
                mode = BackendMode.USERSPACE
            elif "wireguard" in kinds or _kernel_supported(probe, f"mcprobe{os.getpid() % 10**6}"):
                mode = BackendMode.KERNEL
            else:
                mode = BackendMode.USERSPACE
        log.info("WireGuard backend (auto): %s", mode.value)
    if mode is BackendMode.KERNEL:
        return Backend(
            name="kernel",
            link_kind="wireguard",
            netlink=lambda: RtNetlink(netns),
            wireguard=lambda: GenlWireguard(netns=netns),
        )
    sup = supervisor if supervisor is not None else WireguardGoSupervisor()

    def userspace_netlink() -> Netlink:
        return UserspaceNetlink(sup, netns)

    def userspace_wireguard() -> WireguardDevices:
        return UapiWireguardDevices(socket_dir=sup.socket_dir)

    return Backend(
        name="userspace", link_kind="tun", netlink=userspace_netlink, wireguard=userspace_wireguard
    )
