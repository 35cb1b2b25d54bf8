"""The node's own address: the `IP` / `IP6` settings and their `autodetect` (contract §3).

`autodetect(family)` is Calico's "address on the interface of the default route", read from
iproute2's JSON output: the default route of the family with the lowest metric (the first one of
a multipath route), then the first global-scope address of that device that is neither deprecated
nor a temporary (privacy) address, in CIDR form. None when there is no default route or the
device has no such address.

The parsing steps (`default_route_device`, `pick_address`) are pure, so they are tested without a
network namespace; `prefix_cmd` runs `ip` somewhere else (e.g. `nsenter -t PID -n`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any, Final, Literal

from meshcrypt.model.errors import ConfigError, KernelError
from meshcrypt.model.net import IPFamily

log = logging.getLogger(__name__)

AUTODETECT: Final = "autodetect"
NONE: Final = "none"

IPSetting = IPv4Interface | IPv6Interface | None | Literal["autodetect"]

_SETTING_NAME = {IPFamily.V4: "IP", IPFamily.V6: "IP6"}
_ADDR_FAMILY = {IPFamily.V4: "inet", IPFamily.V6: "inet6"}
_EXAMPLE = {IPFamily.V4: "192.168.50.11/24", IPFamily.V6: "fd00:50::11/64"}


def parse_ip_setting(value: str, family: IPFamily) -> IPSetting:
    """`IP` / `IP6`: `autodetect`, `none` (None) or an address in CIDR form.

    Raises ConfigError naming the variable for anything else, including a bare address (the
    prefix length is part of the node's address: it tells peers the node's subnet).
    """
    name = _SETTING_NAME[family]
    text = value.strip()
    if text.lower() == AUTODETECT:
        return AUTODETECT
    if text.lower() == NONE:
        return None
    if "/" not in text:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            raise ConfigError(
                name,
                value,
                f"an address needs its prefix length (CIDR form, e.g. {_EXAMPLE[family]})",
            )
        raise ConfigError(name, value, f"expected autodetect, none or a CIDR ({_EXAMPLE[family]})")
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError as exc:
        raise ConfigError(name, value, f"not an address in CIDR form: {exc}") from exc
    if iface.version != family.value:
        raise ConfigError(name, value, f"not an {family.label} address")
    return iface


# ---- reading iproute2 output ---------------------------------------------------------------------


def default_route_device(routes: Any, family: IPFamily) -> str | None:
    """The device of the best default route in `ip -j route show default` output."""
    best: tuple[int, int, str] | None = None
    if not isinstance(routes, list):
        return None
    for position, route in enumerate(routes):
        if not isinstance(route, dict) or route.get("type", "unicast") != "unicast":
            continue  # unreachable / blackhole / prohibit defaults lead nowhere
        dev = route.get("dev")
        if dev is None:
            hops = route.get("nexthops")
            if isinstance(hops, list) and hops and isinstance(hops[0], dict):
                dev = hops[0].get("dev")
        if not isinstance(dev, str) or not dev:
            continue
        metric = route.get("metric", family.default_route_metric)
        rank = (metric if isinstance(metric, int) else 0, position, dev)
        if best is None or rank < best:
            best = rank
    return None if best is None else best[2]


def pick_address(links: Any, family: IPFamily) -> IPv4Interface | IPv6Interface | None:
    """The first usable global address of the family in `ip -j addr show dev X` output."""
    if not isinstance(links, list):
        return None
    for link in links:
        infos = link.get("addr_info") if isinstance(link, dict) else None
        for info in infos if isinstance(infos, list) else []:
            if not isinstance(info, dict) or info.get("family") != _ADDR_FAMILY[family]:
                continue
            if info.get("scope") != "global" or info.get("deprecated") or info.get("temporary"):
                continue
            local, prefixlen = info.get("local"), info.get("prefixlen")
            if not isinstance(local, str) or not isinstance(prefixlen, int):
                continue
            try:
                iface = ipaddress.ip_interface(f"{local}/{prefixlen}")
            except ValueError:
                continue
            if iface.version == family.value:
                return iface
    return None


# ---- running ip ----------------------------------------------------------------------------------


def _ip_json(args: Sequence[str], prefix_cmd: Sequence[str], timeout: float) -> Any:
    cmd = [*prefix_cmd, "ip", "-j", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"{' '.join(cmd)}: {exc}") from exc
    if done.returncode != 0:
        raise KernelError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    if not done.stdout.strip():
        return []
    try:
        return json.loads(done.stdout)
    except ValueError as exc:
        raise KernelError(f"{' '.join(cmd)}: unreadable output: {exc}") from exc


def autodetect(
    family: IPFamily, *, prefix_cmd: Sequence[str] = (), timeout: float = 10.0
) -> IPv4Interface | IPv6Interface | None:
    """The address (CIDR form) on the interface of the family's default route; see the module
    docstring. Raises KernelError when `ip` cannot be run or fails."""
    flag = f"-{family.value}"
    dev = default_route_device(
        _ip_json([flag, "route", "show", "default"], prefix_cmd, timeout), family
    )
    if dev is None:
        log.info("autodetect %s: no default route", family.label)
        return None
    found = pick_address(_ip_json([flag, "addr", "show", "dev", dev], prefix_cmd, timeout), family)
    log.info("autodetect %s: %s on %s (default route)", family.label, found, dev)
    return found
