"""`calc.blocks.within` against `ipaddress`'s own `subnet_of`."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from meshcrypt.calc.blocks import within
from meshcrypt.model.net import CIDR

_v4 = st.builds(
    lambda a, n: ipaddress.IPv4Network((a, n), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
_v6 = st.builds(
    lambda a, n: ipaddress.IPv6Network((a, n), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)


def _reference(inner: CIDR, outer: CIDR) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


@given(st.one_of(_v4, _v6), st.one_of(_v4, _v6))
def test_within_is_subnet_of(a: CIDR, b: CIDR) -> None:
    assert within(a, b) == _reference(a, b)
    assert within(a, a)


@given(_v4, st.integers(0, 32))
def test_within_its_supernets(a: ipaddress.IPv4Network, prefixlen: int) -> None:
    outer = a.supernet(new_prefix=min(prefixlen, a.prefixlen))
    assert within(a, outer)
    assert within(outer, a) == (outer == a)
