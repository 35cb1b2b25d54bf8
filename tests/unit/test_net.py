"""`meshcrypt.model.net`: the memoised networks and the fast IPv4 paths agree with `ipaddress`."""

from __future__ import annotations

import ipaddress
import pickle
import random

import pytest

from meshcrypt.model.net import (
    IPFamily,
    cidr_from_int,
    fast_ipv4,
    host_cidr,
    parse_cidr,
    parse_cidr_loose,
    parse_ip_or_cidr_address,
)

CIDRS = ["10.65.0.0/26", "0.0.0.0/0", "192.168.1.7/32", "fd00:1::/64", "::/0", "2001:db8::1/128"]


@pytest.mark.parametrize("text", CIDRS)
def test_a_parsed_network_is_the_plain_one(text: str) -> None:
    plain = ipaddress.ip_network(text)
    cidr = parse_cidr(text)
    assert cidr == plain and plain == cidr
    assert hash(cidr) == hash(plain)
    assert {cidr} == {plain} and plain in {cidr: 1}
    assert str(cidr) == str(plain) and repr(cidr) == repr(plain)
    assert isinstance(cidr, type(plain))
    assert pickle.loads(pickle.dumps(cidr)) == plain
    if plain.prefixlen:
        assert cidr.supernet() == plain.supernet()
        assert hash(cidr.supernet()) == hash(plain.supernet())


def test_formatting_and_parsing_meet_in_one_object() -> None:
    built = cidr_from_int(int(ipaddress.IPv4Address("10.77.3.0")), 24, IPFamily.V4)
    assert parse_cidr(str(built)) is built  # the calculation formats, the dispatch parses
    assert parse_cidr("10.77.4.0/24") is parse_cidr("10.77.4.0/24")


@pytest.mark.parametrize(
    "text", ["10.0.0.1/24", "garbage", "fd00::1/64", "10.0.0.0/33", "", "10.0.0.0/8/8"]
)
def test_bad_text_gives_the_ipaddress_error(text: str) -> None:
    with pytest.raises(ValueError) as ours:
        parse_cidr(text)
    with pytest.raises(ValueError) as theirs:
        ipaddress.ip_network(text.strip(), strict=True)
    assert str(ours.value) == str(theirs.value)


def test_host_bits_are_refused_or_masked() -> None:
    with pytest.raises(ValueError, match="host bits set"):
        cidr_from_int(int(ipaddress.IPv4Address("10.0.0.1")), 24, IPFamily.V4)
    assert parse_cidr_loose(" 10.0.0.1/24 ") == ipaddress.ip_network("10.0.0.0/24")
    loose = cidr_from_int(int(ipaddress.IPv4Address("10.1.2.3")), 16, IPFamily.V4, strict=False)
    assert loose == ipaddress.ip_network("10.1.0.0/16")
    assert hash(loose) == hash(ipaddress.ip_network("10.1.0.0/16"))
    with pytest.raises(ValueError) as ours:
        parse_cidr_loose("10.0.0.0/40")
    with pytest.raises(ValueError) as theirs:
        ipaddress.ip_network("10.0.0.0/40", strict=False)
    assert str(ours.value) == str(theirs.value)


def test_host_cidr() -> None:
    assert host_cidr(ipaddress.ip_address("10.1.2.3")) == ipaddress.ip_network("10.1.2.3/32")
    assert host_cidr(ipaddress.ip_address("fd00::5")) == ipaddress.ip_network("fd00::5/128")


def _texts() -> list[str]:
    rng = random.Random(5)
    fixed = [
        "1.2.3.4", "1.2.3.4/24", "0.0.0.0", "255.255.255.255/32", "256.1.1.1", "01.2.3.4",
        "1.2.3.4/33", "1.2.3.4/", "1.2.3", "1.2.3.4.5", " 1.2.3.4 ", "1.2.3.4/255.255.0.0",
        "fd00::1", "fd00::1/64", "x", "", "1.2.3.04", "1.2.3.4/08",
    ]  # fmt: skip
    return fixed + [
        f"{rng.randrange(300)}.{rng.randrange(300)}.{rng.randrange(300)}.{rng.randrange(300)}"
        + (f"/{rng.randrange(40)}" if rng.random() < 0.5 else "")
        for _ in range(500)
    ]


def test_address_parsing_agrees_with_ipaddress() -> None:
    for text in _texts():
        stripped = text.strip()
        try:
            expected = (
                ipaddress.ip_interface(stripped).ip
                if "/" in stripped
                else ipaddress.ip_address(stripped)
            )
        except ValueError:
            with pytest.raises(ValueError):
                parse_ip_or_cidr_address(text)
            continue
        assert parse_ip_or_cidr_address(text) == expected, text
        fast = fast_ipv4(stripped)
        if fast is not None:
            assert fast[0] == int(expected), text
