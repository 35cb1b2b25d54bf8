from __future__ import annotations

import base64
import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcrypt.datastore import codecs, layout
from meshcrypt.datastore.codecs import DELETE, ResourceError
from meshcrypt.datastore.layout import ResourceKind
from meshcrypt.model.errors import PermanentError
from meshcrypt.model.keys import PrivateKey
from meshcrypt.model.resources import (
    IPAMBlockResource,
    IPPoolResource,
    NodeResource,
    WorkloadEndpointResource,
)

KEY = PrivateKey.generate().public_key()
NODE_KEY = layout.node_key("n1")


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _node(spec: Any = None, status: Any = None, **top: Any) -> bytes:
    obj: dict[str, Any] = {
        "kind": "Node",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "n1", "uid": "u-1", "labels": {"a": "b"}},
        "spec": spec if spec is not None else {},
    }
    if status is not None:
        obj["status"] = status
    obj.update(top)
    return _json(obj)


def _reason(excinfo: pytest.ExceptionInfo[ResourceError]) -> str:
    assert excinfo.value.key in str(excinfo.value)
    return excinfo.value.reason


# ---- Node ----------------------------------------------------------------------------------------


def test_full_node() -> None:
    value = _node(
        spec={
            "bgp": {"ipv4Address": "192.168.50.11/24", "ipv6Address": "fd50::11/64", "asNumber": 1},
            "addresses": [
                {"address": "192.168.50.11/24", "type": "CalicoNodeIP"},
                {"address": "10.0.0.5", "type": "InternalIP"},
            ],
            "wireguard": {"interfaceIPv4Address": "10.65.0.1", "interfaceIPv6Address": "fd00::1"},
        },
        status={"wireguardPublicKey": KEY.to_base64(), "wireguardPublicKeyV6": KEY.to_base64()},
    )
    assert codecs.decode_node(NODE_KEY, value) == NodeResource(
        name="n1",
        ipv4_address=ipaddress.IPv4Interface("192.168.50.11/24"),
        ipv6_address=ipaddress.IPv6Interface("fd50::11/64"),
        addresses=(ipaddress.ip_address("192.168.50.11"), ipaddress.ip_address("10.0.0.5")),
        wireguard_ipv4=ipaddress.IPv4Address("10.65.0.1"),
        wireguard_ipv6=ipaddress.IPv6Address("fd00::1"),
        public_key=KEY,
        public_key_v6=KEY,
    )


def test_minimal_node_and_unset_fields() -> None:
    assert codecs.decode_node(NODE_KEY, b'{"spec":{}}') == NodeResource(name="n1")
    value = _node(
        spec={"bgp": {"ipv4Address": ""}, "wireguard": None},
        status={"wireguardPublicKey": "", "wireguardPublicKeyV6": None},
    )
    assert codecs.decode_node(NODE_KEY, value) == NodeResource(name="n1")


def test_bare_bgp_address_is_ignored_as_felix_does() -> None:
    node = codecs.decode_node(NODE_KEY, _node(spec={"bgp": {"ipv4Address": "192.168.50.11"}}))
    assert node.ipv4_address is None


def test_zero_public_key_means_no_key() -> None:
    zero = base64.b64encode(bytes(32)).decode()
    node = codecs.decode_node(NODE_KEY, _node(status={"wireguardPublicKey": zero}))
    assert node.public_key is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "bad JSON"),
        (b"\xff\xfe", "bad JSON"),
        (b"[1, 2]", "expected an object"),
        (_node(kind="IPPool"), "wrong kind 'IPPool'"),
        (_node(apiVersion="v1"), "wrong apiVersion"),
        (_node(metadata={"name": "n2"}), "metadata.name: 'n2' does not match the key"),
        (_node(spec="x"), "spec: expected an object"),
        (_node(spec={"bgp": {"ipv4Address": "300.1.1.1/24"}}), "spec.bgp.ipv4Address: bad address"),
        (_node(spec={"bgp": {"ipv4Address": "fd00::1/64"}}), "is not an IPv4 address"),
        (_node(spec={"bgp": {"ipv6Address": "10.0.0.1/24"}}), "is not an IPv6 address"),
        (_node(spec={"bgp": {"ipv4Address": 17}}), "expected a string"),
        (_node(spec={"addresses": "10.0.0.1"}), "spec.addresses: expected a list"),
        (_node(spec={"addresses": [{"address": "x"}]}), "spec.addresses[0].address: bad address"),
        (
            _node(spec={"wireguard": {"interfaceIPv4Address": "fd00::1"}}),
            "spec.wireguard.interfaceIPv4Address: fd00::1 is not an IPv4 address",
        ),
        (
            _node(spec={"wireguard": {"interfaceIPv6Address": "10.65.0.1"}}),
            "interfaceIPv6Address: 10.65.0.1 is not an IPv6 address",
        ),
        (_node(spec={"wireguard": {"interfaceIPv4Address": "10.0.0.1/32"}}), "bad address"),
        (
            _node(status={"wireguardPublicKey": "not base64!"}),
            "bad WireGuard public key: not base64",
        ),
        (
            _node(status={"wireguardPublicKeyV6": base64.b64encode(b"short").decode()}),
            "status.wireguardPublicKeyV6: bad WireGuard public key: a WireGuard key has 32 bytes",
        ),
    ],
)
def test_invalid_nodes(value: bytes, reason: str) -> None:
    with pytest.raises(ResourceError) as excinfo:
        codecs.decode_node(NODE_KEY, value)
    assert reason in _reason(excinfo)
    assert excinfo.value.key == NODE_KEY


def test_a_node_value_under_another_kind_of_key_is_refused() -> None:
    with pytest.raises(ResourceError, match="not a Node key"):
        codecs.decode_node(layout.ip_pool_key("n1"), _node())


# ---- FelixConfiguration --------------------------------------------------------------------------


def test_felix_configuration_returns_the_raw_spec() -> None:
    key = layout.felix_configuration_key("node.n1")
    spec = {"wireguardEnabled": True, "wireguardMTU": 1400, "unknownField": [1]}
    value = _json({"kind": "FelixConfiguration", "metadata": {"name": "node.n1"}, "spec": spec})
    assert codecs.decode_felix_configuration(key, value) == spec
    assert codecs.decode_felix_configuration(key, b"{}") == {}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "bad JSON"),
        (b'{"kind": "Node"}', "wrong kind"),
        (b'{"metadata": {"name": "other"}}', "does not match the key"),
        (b'{"spec": []}', "spec: expected an object"),
    ],
)
def test_invalid_felix_configurations(value: bytes, reason: str) -> None:
    with pytest.raises(ResourceError, match=reason):
        codecs.decode_felix_configuration(layout.felix_configuration_key("default"), value)


# ---- IPPool --------------------------------------------------------------------------------------


def _pool(**spec: Any) -> bytes:
    return _json({"kind": "IPPool", "metadata": {"name": "p"}, "spec": spec})


def test_ip_pools_with_defaults() -> None:
    key = layout.ip_pool_key("p")
    assert codecs.decode_ip_pool(key, _pool(cidr="10.65.0.0/16")) == IPPoolResource(
        name="p", cidr=ipaddress.ip_network("10.65.0.0/16"), block_size=26
    )
    assert codecs.decode_ip_pool(
        key,
        _pool(
            cidr="fd00:65::/48",
            blockSize=120,
            disabled=True,
            allowedUses=["Workload"],
            nodeSelector="zone == 'a'",
            ipipMode="Never",
        ),
    ) == IPPoolResource(
        name="p",
        cidr=ipaddress.ip_network("fd00:65::/48"),
        block_size=120,
        disabled=True,
        allowed_uses=("Workload",),
        node_selector="zone == 'a'",
    )


def test_pool_cidr_with_host_bits_is_masked_like_go() -> None:
    pool = codecs.decode_ip_pool(layout.ip_pool_key("p"), _pool(cidr="10.65.3.4/16"))
    assert pool.cidr == ipaddress.ip_network("10.65.0.0/16")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (_pool(), "spec.cidr: missing"),
        (_pool(cidr="10.65.0.0/33"), "spec.cidr: bad CIDR"),
        (_pool(cidr="banana"), "bad CIDR"),
        (_pool(cidr="10.65.0.0/16", blockSize=19), "19 is outside 20–32 for IPv4"),
        (_pool(cidr="fd00::/48", blockSize=26), "26 is outside 116–128 for IPv6"),
        (_pool(cidr="10.65.0.0/28", blockSize=26), "/26 blocks do not fit in 10.65.0.0/28"),
        (_pool(cidr="10.65.0.0/16", blockSize="26"), "expected an integer"),
        (_pool(cidr="10.65.0.0/16", blockSize=True), "expected an integer"),
        (_pool(cidr="10.65.0.0/16", disabled="no"), "expected true or false"),
        (_pool(cidr="10.65.0.0/16", allowedUses=[1]), "allowedUses[0]: expected a string"),
    ],
)
def test_invalid_ip_pools(value: bytes, reason: str) -> None:
    with pytest.raises(ResourceError) as excinfo:
        codecs.decode_ip_pool(layout.ip_pool_key("p"), value)
    assert reason in _reason(excinfo)


# ---- IPAM ----------------------------------------------------------------------------------------

V4_BLOCK = ipaddress.ip_network("10.65.0.64/26")
V6_BLOCK = ipaddress.ip_network("fd00:65::40/122")


def _block(cidr: str, **fields: Any) -> bytes:
    obj: dict[str, Any] = {
        "cidr": cidr,
        "affinity": "host:n1",
        "strictAffinity": False,
        "allocations": [0, None],
        "unallocated": [1],
        "attributes": [{"handle_id": "h", "secondary": {"node": "n1"}}],
        "deleted": False,
    }
    obj.update(fields)
    return _json(obj)


@pytest.mark.parametrize("cidr", [V4_BLOCK, V6_BLOCK], ids=["v4", "v6"])
def test_ipam_blocks(cidr: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    key = layout.ipam_block_key(cidr)
    assert codecs.decode_ipam_block(key, _block(str(cidr))) == IPAMBlockResource(cidr, "n1")
    unaffine = codecs.decode_ipam_block(key, _block(str(cidr), affinity=None, deleted=True))
    assert unaffine == IPAMBlockResource(cidr, None, deleted=True)
    other = codecs.decode_ipam_block(key, _block(str(cidr), affinity="virtual:x"))
    assert other.node is None


@pytest.mark.parametrize(
    ("cidr", "value", "reason"),
    [
        (V4_BLOCK, _block("10.65.0.0/26"), "cidr: 10.65.0.0/26 does not match the key's block"),
        (V4_BLOCK, _block("10.65.0.65/26"), "cidr: bad CIDR"),
        (V4_BLOCK, b'{"affinity": "host:n1"}', "cidr: missing"),
        (V6_BLOCK, _block("10.65.0.64/26"), "does not match"),
        (V4_BLOCK, _block("10.65.0.64/26", affinity=3), "affinity: expected a string"),
        (V4_BLOCK, b"nope", "bad JSON"),
    ],
)
def test_invalid_ipam_blocks(cidr, value: bytes, reason: str) -> None:
    key = layout.ipam_block_key(cidr)
    with pytest.raises(ResourceError) as excinfo:
        codecs.decode_ipam_block(key, value)
    assert reason in _reason(excinfo)


def test_block_under_a_malformed_key_is_refused() -> None:
    with pytest.raises(ResourceError, match="not an IPAM block key"):
        codecs.decode_ipam_block("/calico/ipam/v2/assignment/ipv4/block/x", _block("10.0.0.0/26"))


def test_block_affinity() -> None:
    key = layout.block_affinity_key("n1", V6_BLOCK)
    affinity = codecs.decode_block_affinity(key, b'{"state":"confirmed","deleted":false}')
    assert affinity == codecs.BlockAffinity("n1", V6_BLOCK, "confirmed", deleted=False)
    with pytest.raises(ResourceError, match="state: missing"):
        codecs.decode_block_affinity(key, b'{"deleted":false}')


def test_ipam_handle() -> None:
    key = layout.ipam_handle_key("wireguard-tunnel-addr-n1")
    value = b'{"handleID":"wireguard-tunnel-addr-n1","block":{"10.65.0.64/26":1},"deleted":false}'
    assert codecs.decode_ipam_handle(key, value) == codecs.IPAMHandle(
        "wireguard-tunnel-addr-n1", {V4_BLOCK: 1}
    )
    for bad, reason in [
        (b'{"handleID":"other"}', "does not match the key"),
        (b'{"block":{"10.65.0.64/26":-1}}', "expected a count"),
        (b'{"block":{"10.65.0.64/33":1}}', "bad CIDR"),
        (b'{"block":[]}', "block: expected an object"),
    ]:
        with pytest.raises(ResourceError, match=reason):
            codecs.decode_ipam_handle(key, bad)


# ---- WorkloadEndpoint ----------------------------------------------------------------------------

WEP_KEY = layout.workload_endpoint_key("default", "n1-k8s-pod-eth0")


def _wep(spec: Any, **metadata: Any) -> bytes:
    meta = {"name": "n1-k8s-pod-eth0", "namespace": "default", **metadata}
    return _json({"kind": "WorkloadEndpoint", "metadata": meta, "spec": spec})


def test_workload_endpoint() -> None:
    value = _wep({"node": "n1", "ipNetworks": ["10.65.0.5/32", "fd00::5/128"], "pod": "pod"})
    assert codecs.decode_workload_endpoint(WEP_KEY, value) == WorkloadEndpointResource(
        key="default/n1-k8s-pod-eth0",
        node="n1",
        ip_networks=(ipaddress.ip_network("10.65.0.5/32"), ipaddress.ip_network("fd00::5/128")),
    )
    bare = codecs.decode_workload_endpoint(
        WEP_KEY, _wep({"node": "n1", "ipNetworks": ["10.65.0.5"]})
    )
    assert bare.ip_networks == (ipaddress.ip_network("10.65.0.5/32"),)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (_wep({"ipNetworks": []}), "spec.node: missing"),
        (_wep({"node": "n1", "ipNetworks": ["10.65.0.0/26"]}), "is not a /32 or /128"),
        (_wep({"node": "n1", "ipNetworks": ["x"]}), "ipNetworks[0]: bad CIDR"),
        (_wep({"node": "n1", "ipNetworks": [5]}), "ipNetworks[0]: expected a string"),
        (_wep({"node": "n1"}, namespace="kube-system"), "metadata.namespace"),
    ],
)
def test_invalid_workload_endpoints(value: bytes, reason: str) -> None:
    with pytest.raises(ResourceError) as excinfo:
        codecs.decode_workload_endpoint(WEP_KEY, value)
    assert reason in _reason(excinfo)


# ---- decode --------------------------------------------------------------------------------------


def test_decode_dispatches_on_the_key() -> None:
    assert codecs.decode(NODE_KEY, _node()) == (ResourceKind.NODE, NodeResource(name="n1"))
    kind, _ = codecs.decode(layout.ipam_block_key(V4_BLOCK), _block(str(V4_BLOCK))) or (None, None)
    assert kind is ResourceKind.IPAM_BLOCK
    assert codecs.decode("/calico/felix/v2/x", b"{}") is None


def test_resource_error_is_permanent_and_names_key_and_reason() -> None:
    error = ResourceError("/k", "bad CIDR")
    assert str(error) == "invalid resource at /k: bad CIDR"
    assert isinstance(error, PermanentError)


# ---- patch_json ----------------------------------------------------------------------------------


def test_patch_sets_a_nested_field_and_keeps_everything_else() -> None:
    raw = (
        b'{"kind":"Node","metadata":{"name":"n1","annotations":{"x":"\\u00e9"}},'
        b'"spec":{"bgp":{"ipv4Address":"10.0.0.1/24","asNumber":64512},"future":[1,2.5,null]},'
        b'"status":{"podCIDRs":["10.65.0.0/24"]},"sequenceNumber":18446744073709551615}'
    )
    out = codecs.patch_json(raw, ("status", "wireguardPublicKey"), KEY.to_base64())
    expected = json.loads(raw)
    expected["status"]["wireguardPublicKey"] = KEY.to_base64()
    assert json.loads(out) == expected
    assert list(json.loads(out)) == ["kind", "metadata", "spec", "status", "sequenceNumber"]
    assert b"18446744073709551615" in out  # a uint64 survives exactly


def test_patch_creates_missing_objects_and_deletes() -> None:
    out = codecs.patch_json(
        b'{"spec":{}}', ("spec", "wireguard", "interfaceIPv4Address"), "10.0.0.1"
    )
    assert json.loads(out) == {"spec": {"wireguard": {"interfaceIPv4Address": "10.0.0.1"}}}
    back = codecs.patch_json(out, ("spec", "wireguard", "interfaceIPv4Address"), DELETE)
    assert json.loads(back) == {"spec": {"wireguard": {}}}
    # Deleting under a missing object changes nothing.
    assert json.loads(codecs.patch_json(b'{"a":1}', ("status", "k"), DELETE)) == {"a": 1}
    assert json.loads(codecs.patch_json(b"", ("a",), 1)) == {"a": 1}


def test_patch_refuses_non_objects() -> None:
    with pytest.raises(ValueError):
        codecs.patch_json(b"[1]", ("a",), 1)
    with pytest.raises(ValueError, match="spec is not a JSON object"):
        codecs.patch_json(b'{"spec":"x"}', ("spec", "a"), 1)
    with pytest.raises(ValueError):
        codecs.patch_json(b"{}", (), 1)


# ---- the fast IPv4 paths agree with ipaddress ----------------------------------------------------

_octet = st.one_of(
    st.integers(0, 255).map(str),
    st.integers(0, 999).map(str),
    st.integers(0, 99).map(lambda i: f"0{i}"),
    st.sampled_from(["", "x", " 1", "٣", "+1", "0x1"]),
)
_ip_text = st.builds(
    lambda octets, suffix: ".".join(octets) + suffix,
    st.lists(_octet, min_size=3, max_size=5),
    st.one_of(
        st.just(""),
        st.integers(0, 40).map(lambda p: f"/{p}"),
        st.sampled_from(["/016", "/255.255.0.0", "/", "/ 1", "/٢", "/-1", "/0x10"]),
    ),
)


def _outcome(parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except ValueError:
        return ValueError


@given(st.one_of(_ip_text, st.text(max_size=24)))
def test_fast_ipv4_parsing_agrees_with_ipaddress(text: str) -> None:
    assert _outcome(codecs._ip_interface, text) == _outcome(ipaddress.ip_interface, text)
    assert _outcome(codecs._ip_address, text) == _outcome(ipaddress.ip_address, text)


@pytest.mark.parametrize(
    "text", ["10.65.0.64/26", "10.65.0.64/26 ", "10.65.000.64/26", "fd00::/122"]
)
def test_block_value_cidr_must_name_the_keys_block(text: str) -> None:
    key = layout.ipam_block_key(ipaddress.ip_network("10.65.0.64/26"))
    value = _json({"cidr": text, "affinity": "host:n1"})
    if text.strip() == "10.65.0.64/26":
        assert codecs.decode_ipam_block(key, value).cidr == ipaddress.ip_network(text.strip())
    else:
        with pytest.raises(ResourceError):
            codecs.decode_ipam_block(key, value)
