"""IP families, addresses and CIDRs, parametrised by family so v4 and v6 share one code path."""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from typing import NewType, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
CIDR: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

NodeName = NewType("NodeName", str)


class IPFamily(enum.IntEnum):
    """An IP version. The value is the version number (4 or 6)."""

    V4 = 4
    V6 = 6

    @property
    def host_prefixlen(self) -> int:
        return 32 if self is IPFamily.V4 else 128

    @property
    def af(self) -> int:
        """The socket address family (AF_INET / AF_INET6)."""
        return socket.AF_INET if self is IPFamily.V4 else socket.AF_INET6

    @property
    def default_route_metric(self) -> int:
        """Kernel default metric: 0 for IPv4, 1024 for IPv6 routes."""
        return 0 if self is IPFamily.V4 else 1024

    @property
    def label(self) -> str:
        return "IPv4" if self is IPFamily.V4 else "IPv6"

    @classmethod
    def of(cls, value: IPAddress | CIDR) -> IPFamily:
        return cls(value.version)


class _Memoised:
    """Makes an `ipaddress` network compute its hash and its text once.

    `ipaddress` recomputes both at every use, and a CIDR of a 10,000-node cluster is hashed some
    twenty times and formatted twice on its way from etcd to the kernel. The networks stay equal
    to, and hash like, plain ones; networks derived from them (`supernet()`, `subnets()`) are of
    the memoised types too.
    """

    __slots__ = ("_hash", "_text")
    _plain: str  # the class name `repr` shows

    def __init__(self, address: object, strict: bool = True) -> None:
        self._text: str | None = ""  # "": not built yet (the base class formats its errors)
        super().__init__(address, strict)  # type: ignore[call-arg]
        self._hash: int = super().__hash__()
        self._text = None

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._text = super().__str__()
            _remember(text, self)  # type: ignore[arg-type]
        return text or super().__str__()

    def __repr__(self) -> str:
        return f"{self._plain}({str(self)!r})"


class _Network4(_Memoised, ipaddress.IPv4Network):
    __slots__ = ()
    _plain = "IPv4Network"


class _Network6(_Memoised, ipaddress.IPv6Network):
    __slots__ = ()
    _plain = "IPv6Network"


# Text → CIDR of the networks parsed or formatted lately: the calculation formats a CIDR into a
# message and the dispatch parses it back; both see the same object. Bounded: starts afresh.
_PARSED: dict[str, CIDR] = {}
_PARSED_LIMIT = 1 << 16


def _remember(text: str, cidr: CIDR) -> None:
    if len(_PARSED) >= _PARSED_LIMIT:
        _PARSED.clear()
    _PARSED[text] = cidr


def cidr_from_int(value: int, prefixlen: int, family: IPFamily, *, strict: bool = True) -> CIDR:
    """The network `value`/`prefixlen`; host bits set are a ValueError, or masked if not `strict`."""
    if family is IPFamily.V4:
        return _Network4((value, prefixlen), strict)
    return _Network6((value, prefixlen), strict)


def parse_cidr(text: str) -> CIDR:
    """Parse a CIDR; host bits must be zero except for host-length prefixes of a bare IP."""
    found = _PARSED.get(text)
    if found is not None:
        return found
    cidr = _parse(text, strict=True)
    _remember(text, cidr)
    return cidr


def parse_cidr_loose(text: str) -> CIDR:
    """Parse a CIDR the way Go's ParseCIDR does: host bits are masked."""
    return _parse(text, strict=False)


def _parse(text: str, *, strict: bool) -> CIDR:
    stripped = text.strip()
    try:
        return _Network6(stripped, strict) if ":" in stripped else _Network4(stripped, strict)
    except ValueError:
        ipaddress.ip_network(stripped, strict=strict)  # raises the usual, clearer error
        raise


#: An IPv4 address as `ipaddress` prints it, optionally with a decimal prefix length.
_IPV4_TEXT = re.compile(
    r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})"
    r"(?:/([0-9]{1,2}))?"
)


def fast_ipv4(text: str) -> tuple[int, int | None] | None:
    """(address, prefix length or None) of plain dotted-decimal IPv4 text, else None.

    The common case, decoded from integers: `ipaddress`'s text parser costs several times as much
    and runs for every Node of the cluster. Anything else (IPv6, netmasks, bad text) returns None
    and goes through `ipaddress`, which gives the same value or the error message.
    """
    match = _IPV4_TEXT.fullmatch(text)
    if match is None:
        return None
    a, b, c, d, prefix = match.groups()
    octets = int(a), int(b), int(c), int(d)
    prefixlen = None if prefix is None else int(prefix)
    if max(octets) > 255 or (prefixlen is not None and prefixlen > 32):
        return None
    return (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3], prefixlen


def parse_ip_or_cidr_address(text: str) -> IPAddress:
    """Parse "10.0.0.2" or "10.0.0.2/24" into the address (the mask is dropped)."""
    text = text.strip()
    fast = fast_ipv4(text)
    if fast is not None:
        return ipaddress.IPv4Address(fast[0])
    if "/" in text:
        return ipaddress.ip_interface(text).ip
    return ipaddress.ip_address(text)


def host_cidr(addr: IPAddress) -> CIDR:
    """The /32 or /128 network of one address."""
    family = IPFamily(addr.version)
    return cidr_from_int(int(addr), family.host_prefixlen, family)


def is_host_cidr(cidr: CIDR) -> bool:
    return cidr.prefixlen == cidr.max_prefixlen
