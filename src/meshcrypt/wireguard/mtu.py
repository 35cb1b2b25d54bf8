"""WireGuard MTU auto-detection (`reference-behavior.md` §3, contract §3: MTU 0 means auto).

WireGuard wraps every packet in an outer IP + UDP + WireGuard header, so the device MTU must be the
host's MTU minus that overhead or the encrypted packets no longer fit the underlay:

* IPv4: 20 (IP) + 8 (UDP) + 32 (WireGuard data header 16 + Poly1305 tag 16) = **60**;
* IPv6: 40 + 8 + 32 = **80**.

The host MTU is Felix's `findHostMTU`: the smallest MTU among the links whose name matches
`MTUIfacePattern` (default `^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)`, searched like Go's
`MatchString`, i.e. unanchored unless the pattern anchors itself) **and that are operationally up**
(current Felix skips down links so that, e.g., a freshly attached cloud NIC does not drag the MTU
down before it is configured; `Link.oper_up` is IFF_RUNNING, which counts TUN-style UNKNOWN as up,
like Felix's `LinkIsOperUp`). When nothing matches, the host MTU is **1460**, the smallest of the
common cloud providers, so the WireGuard default becomes 1400 (IPv6 1380) — with a warning, since it
usually means the pattern does not fit the host's interface names (calico#4606: jumbo-frame hosts
stuck at the default).

Deliberate differences from Felix:

* Felix computes the MTU once at start (any change restarts it). meshcrypt recomputes: the agent
  calls `MtuDetector.refresh()` on link events (`relevant()` says which names matter) and rebuilds
  the family's configuration when the result changes.
* Felix's AKS adjustment (host MTU − 100 with host encryption on AKS) is not applied: it depends on
  the Kubernetes provider, which an etcd-only agent does not know. Set `wireguardMTU` explicitly there.

`host_mtu()` and `wireguard_mtu()` are pure; `MtuDetector` caches the link list read through the
`ports.LinkLister` port and is shaped as the agent's `MtuSource` (`(FelixConfig, IPFamily) -> int |
None`, None = "use the configured MTU").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from meshcrypt.model.config import DEFAULT_MTU_IFACE_PATTERN, FelixConfig
from meshcrypt.model.dataplane import Link
from meshcrypt.model.net import IPFamily
from meshcrypt.ports import LinkLister

log = logging.getLogger(__name__)

#: Felix's host MTU when no interface matches MTUIfacePattern.
DEFAULT_HOST_MTU = 1460
#: Outer IP header + UDP header + WireGuard data header and authentication tag.
WIREGUARD_OVERHEAD = {IPFamily.V4: 60, IPFamily.V6: 80}
#: IPv6 needs at least 1280 on every link; the kernel refuses a smaller MTU on a device with IPv6.
IPV6_MIN_MTU = 1280
#: The smallest MTU Linux accepts for an IPv4 device.
IPV4_MIN_MTU = 68


@dataclass(frozen=True, slots=True)
class HostMtu:
    """The detected host MTU and where it came from."""

    mtu: int
    #: The up links that matched the pattern, smallest MTU first ("" entries never appear).
    matched: tuple[str, ...] = ()

    @property
    def detected(self) -> bool:
        """False when nothing matched and `mtu` is Felix's 1460 fallback."""
        return bool(self.matched)


def compile_pattern(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    """The pattern compiled; an invalid one (config parsing normally refuses it) falls back to the
    default, with a warning, so a bad value never stops MTU detection."""
    if isinstance(pattern, re.Pattern):
        return pattern
    try:
        return re.compile(pattern)
    except re.error as exc:
        log.warning(
            "MTUIfacePattern %r is not a valid regular expression (%s); using the default %r",
            pattern,
            exc,
            DEFAULT_MTU_IFACE_PATTERN,
        )
        return re.compile(DEFAULT_MTU_IFACE_PATTERN)


def host_mtu(links: Iterable[Link], pattern: str | re.Pattern[str]) -> HostMtu:
    """The smallest MTU of the operationally up links whose name matches `pattern`; 1460 if none."""
    regex = compile_pattern(pattern)
    candidates = sorted(
        (link.mtu, link.name)
        for link in links
        if link.mtu > 0 and link.oper_up and regex.search(link.name)
    )
    if not candidates:
        return HostMtu(DEFAULT_HOST_MTU)
    return HostMtu(candidates[0][0], tuple(name for _mtu, name in candidates))


def wireguard_mtu(host: int, family: IPFamily) -> int:
    """The WireGuard device MTU for a host MTU: host − 60 (IPv4) or − 80 (IPv6), never below the
    family's minimum (68 / 1280), which a tiny underlay could otherwise produce."""
    floor = IPV4_MIN_MTU if family is IPFamily.V4 else IPV6_MIN_MTU
    return max(host - WIREGUARD_OVERHEAD[family], floor)


def configured_mtu(config: FelixConfig, family: IPFamily) -> int:
    """`wireguardMTU` / `wireguardMTUV6` as configured (0 = auto)."""
    return config.wireguard_mtu if family is IPFamily.V4 else config.wireguard_mtu_v6


class MtuDetector:
    """Host MTU detection over a cached link list; the agent's `MtuSource`.

    Usage::

        detector = MtuDetector(RtNetlink())       # reads the links once
        Dataplane(..., mtu_source=detector)        # detector(config, family) -> int | None
        # on each LinkMonitor event whose name is relevant (or after ENOBUFS):
        if detector.refresh():
            ...rebuild the family configurations (config.for_family(family, mtu=detector(...)))

    `__call__` never touches the kernel; only `refresh()` does (one link dump).
    """

    def __init__(self, lister: LinkLister, pattern: str = DEFAULT_MTU_IFACE_PATTERN) -> None:
        self._lister = lister
        self._regex = compile_pattern(pattern)
        self._links: tuple[Link, ...] = tuple(lister.links())
        self._last = host_mtu(self._links, self._regex)
        self._warned_fallback = False

    @property
    def host(self) -> HostMtu:
        """The host MTU for the current pattern and link list."""
        return self._last

    def set_pattern(self, pattern: str) -> bool:
        """Use another MTUIfacePattern; True when the host MTU changed."""
        if pattern == self._regex.pattern:
            return False
        self._regex = compile_pattern(pattern)
        return self._recompute()

    def relevant(self, name: str) -> bool:
        """Whether a link event for `name` can change the host MTU (its name matches the pattern)."""
        return bool(self._regex.search(name))

    def refresh(self) -> bool:
        """Read the links again; True when the host MTU changed."""
        self._links = tuple(self._lister.links())
        return self._recompute()

    def _recompute(self) -> bool:
        new = host_mtu(self._links, self._regex)
        changed = new.mtu != self._last.mtu
        if changed:
            log.info("Host MTU is now %d (was %d; from %s)", new.mtu, self._last.mtu, _source(new))
        self._last = new
        return changed

    def __call__(self, config: FelixConfig, family: IPFamily) -> int | None:
        """The MTU to give the family's manager: None when an explicit MTU is configured (the
        configuration's own value applies), else the detected host MTU minus the overhead."""
        if configured_mtu(config, family):
            return None
        self.set_pattern(config.mtu_iface_pattern)
        host = self._last
        if not host.detected and not self._warned_fallback:
            log.warning(
                "Failed to auto-detect host MTU - no up interface matches MTUIfacePattern %r; "
                "assuming %d. Set mtuIfacePattern to match the host's interfaces, or set "
                "wireguardMTU / wireguardMTUV6.",
                self._regex.pattern,
                DEFAULT_HOST_MTU,
            )
            self._warned_fallback = True
        elif host.detected:
            self._warned_fallback = False
        mtu = wireguard_mtu(host.mtu, family)
        log.debug("Defaulting %s WireGuard MTU to %d (%s)", family.label, mtu, _source(host))
        return mtu


def _source(host: HostMtu) -> str:
    if not host.detected:
        return "no interface matched: default"
    return f"smallest of {', '.join(host.matched)}"
