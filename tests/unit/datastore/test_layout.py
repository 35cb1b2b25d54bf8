from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcrypt.datastore import layout
from meshcrypt.datastore.layout import ParsedKey, ResourceKind
from meshcrypt.model.net import IPFamily

R = "/calico/resources/v3/projectcalico.org"


def test_resource_keys_follow_calicos_etcdv3_layout() -> None:
    assert layout.node_key("node-1") == f"{R}/nodes/node-1"
    assert layout.felix_configuration_key("default") == f"{R}/felixconfigurations/default"
    assert layout.node_felix_configuration_name("n1") == "node.n1"
    assert layout.ip_pool_key("pool4") == f"{R}/ippools/pool4"
    assert layout.workload_endpoint_key("ns", "n1-k8s-pod-eth0") == (
        f"{R}/workloadendpoints/ns/n1-k8s-pod-eth0"
    )
    assert layout.ipam_handle_key("wireguard-tunnel-addr-n1") == (
        "/calico/ipam/v2/handle/wireguard-tunnel-addr-n1"
    )


def test_block_keys_keep_dots_and_colons() -> None:
    v4 = ipaddress.ip_network("10.65.0.64/26")
    v6 = ipaddress.ip_network("fd00:65::1:0/122")
    assert layout.ipam_block_key(v4) == "/calico/ipam/v2/assignment/ipv4/block/10.65.0.64-26"
    assert layout.ipam_block_key(v6) == "/calico/ipam/v2/assignment/ipv6/block/fd00:65::1:0-122"
    assert layout.block_affinity_key("n1", v4) == "/calico/ipam/v2/host/n1/ipv4/block/10.65.0.64-26"
    assert layout.block_affinity_key("n1", v6) == (
        "/calico/ipam/v2/host/n1/ipv6/block/fd00:65::1:0-122"
    )
    assert layout.ipam_blocks_prefix(IPFamily.V6) == "/calico/ipam/v2/assignment/ipv6/block/"
    assert (
        layout.block_affinities_prefix("n1", IPFamily.V4) == "/calico/ipam/v2/host/n1/ipv4/block/"
    )


def test_wireguard_handle_ids_are_calicos() -> None:
    assert layout.wireguard_handle_id("n1", IPFamily.V4) == "wireguard-tunnel-addr-n1"
    assert layout.wireguard_handle_id("n1", IPFamily.V6) == "wireguard-v6-tunnel-addr-n1"


@pytest.mark.parametrize("bad", ["", "a/b"])
def test_names_that_cannot_be_one_segment_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        layout.node_key(bad)
    with pytest.raises(ValueError):
        layout.workload_endpoint_key("ns", bad)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (f"{R}/nodes/n1", ParsedKey(ResourceKind.NODE, "n1")),
        (
            f"{R}/felixconfigurations/node.n1",
            ParsedKey(ResourceKind.FELIX_CONFIGURATION, "node.n1"),
        ),
        (f"{R}/ippools/p", ParsedKey(ResourceKind.IP_POOL, "p")),
        (f"{R}/workloadendpoints/ns/w", ParsedKey(ResourceKind.WORKLOAD_ENDPOINT, "ns/w")),
        (
            "/calico/ipam/v2/assignment/ipv4/block/10.65.0.0-26",
            ParsedKey(ResourceKind.IPAM_BLOCK, "10.65.0.0/26"),
        ),
        (
            "/calico/ipam/v2/assignment/ipv6/block/fd00::-122",
            ParsedKey(ResourceKind.IPAM_BLOCK, "fd00::/122"),
        ),
        (
            "/calico/ipam/v2/host/n1/ipv6/block/fd00::-122",
            ParsedKey(ResourceKind.BLOCK_AFFINITY, "n1/fd00::/122"),
        ),
        ("/calico/ipam/v2/handle/h1", ParsedKey(ResourceKind.IPAM_HANDLE, "h1")),
    ],
)
def test_classify(key: str, expected: ParsedKey) -> None:
    assert layout.classify(key) == expected


@pytest.mark.parametrize(
    "key",
    [
        f"{R}/nodes/",
        f"{R}/nodes/a/b",
        f"{R}/workloadendpoints/ns",
        f"{R}/workloadendpoints/ns/",
        f"{R}/networkpolicies/default/p",
        "/calico/ipam/v2/assignment/ipv4/block/10.65.0.1-26",  # host bits set
        "/calico/ipam/v2/assignment/ipv6/block/10.65.0.0-26",  # family segment disagrees
        "/calico/ipam/v2/assignment/ipv6/block/fd00--122",  # the KDD resource-name form
        "/calico/ipam/v2/assignment/ipv6/block/FD00::-122",  # not how Go prints it
        "/calico/ipam/v2/assignment/ipv4/block/10.65.0.0/26",
        "/calico/ipam/v2/assignment/ipv4/10.65.0.0-26",
        "/calico/ipam/v2/host//ipv4/block/10.65.0.0-26",
        "/calico/felix/v2/default/host/n1/status",
        "/unrelated",
    ],
)
def test_classify_ignores_other_and_malformed_keys(key: str) -> None:
    assert layout.classify(key) is None


def test_node_of_felix_configuration() -> None:
    assert layout.node_of_felix_configuration("node.n1") == "n1"
    assert layout.node_of_felix_configuration("node.") is None
    assert layout.node_of_felix_configuration("default") is None


def test_watch_prefixes_do_not_overlap_and_cover_the_watched_kinds() -> None:
    prefixes = layout.WATCH_PREFIXES
    assert not any(a != b and b.startswith(a) for a in prefixes for b in prefixes)
    watched = {
        layout.node_key("n"),
        layout.felix_configuration_key("default"),
        layout.ip_pool_key("p"),
        layout.workload_endpoint_key("ns", "w"),
        layout.ipam_block_key(ipaddress.ip_network("10.0.0.0/26")),
        layout.ipam_block_key(ipaddress.ip_network("fd00::/122")),
    }
    for key in watched:
        assert any(key.startswith(p) for p in prefixes), key


_networks = st.one_of(
    st.builds(
        lambda a, n: ipaddress.IPv4Network((a, n), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    ),
    st.builds(
        lambda a, n: ipaddress.IPv6Network((a, n), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    ),
)


@given(_networks, st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True))
def test_block_and_affinity_keys_parse_back(cidr, node: str) -> None:
    assert layout.parse_block_key(layout.ipam_block_key(cidr)) == cidr
    assert layout.parse_affinity_key(layout.block_affinity_key(node, cidr)) == (node, cidr)
    assert layout.classify(layout.ipam_block_key(cidr)) == ParsedKey(
        ResourceKind.IPAM_BLOCK, str(cidr)
    )


def _reference_parse_block_name(family_segment: str, name: str):
    """The plain `ipaddress` parser that `layout._parse_block_name` must agree with."""
    if family_segment not in ("ipv4", "ipv6"):
        return None
    try:
        cidr = ipaddress.ip_network(name.replace("-", "/", 1), strict=True)
    except ValueError:
        return None
    if f"ipv{cidr.version}" != family_segment or layout.block_name(cidr) != name:
        return None
    return cidr


_octet = st.one_of(
    st.integers(0, 255).map(str),
    st.integers(0, 999).map(str),
    st.integers(0, 255).map(lambda i: f"0{i}"),  # a leading zero
    st.sampled_from(["", "x", "1 ", "٣", "+1", "-1", "0x1"]),
)
_prefix = st.one_of(
    st.integers(0, 40).map(str), st.sampled_from(["", "026", "2 6", "a", "-26", "٢"])
)
_v4_like = st.builds(
    lambda octets, sep, prefix: ".".join(octets) + sep + prefix,
    st.lists(_octet, min_size=3, max_size=5),
    st.sampled_from(["-", "/", "--", ""]),
    _prefix,
)


@given(st.one_of(_v4_like, st.text(max_size=20)), st.sampled_from(["ipv4", "ipv6", "ipv5"]))
def test_block_names_parse_as_the_ipaddress_parser_does(name: str, segment: str) -> None:
    assert layout._parse_block_name(segment, name) == _reference_parse_block_name(segment, name)


@given(_networks)
def test_every_block_name_parses_as_the_ipaddress_parser_does(cidr) -> None:
    name = layout.block_name(cidr)
    segment = f"ipv{cidr.version}"
    assert layout._parse_block_name(segment, name) == cidr
    assert _reference_parse_block_name(segment, name) == cidr
