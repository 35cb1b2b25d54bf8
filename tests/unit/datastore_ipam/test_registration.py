"""meshcrypt.datastore.registration: the Node resource and the tunnel address decision."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from meshcrypt.datastore import codecs, ipam, layout, registration
from meshcrypt.fakes.datastore import DatastoreOp, FakeDatastore
from meshcrypt.model.keys import PrivateKey
from meshcrypt.model.net import IPFamily

from .helpers import addresses_of, block_doc, check_block, pool, put_json, run, stored

V4, V6 = IPFamily.V4, IPFamily.V6
NODE_KEY = layout.node_key("node-a")
ip4 = ipaddress.IPv4Interface
ip6 = ipaddress.IPv6Interface


def node_doc(ds: FakeDatastore):
    return stored(ds, NODE_KEY)


# ---- ensure_node ---------------------------------------------------------------------------------


def test_ensure_node_creates_a_calico_node():
    ds = FakeDatastore()

    assert run(registration.ensure_node(ds, "node-a", ip4("192.168.50.11/24"), ip6("fd00::b/64")))

    doc = node_doc(ds)
    assert doc["kind"] == "Node"
    assert doc["apiVersion"] == "projectcalico.org/v3"
    assert doc["metadata"]["name"] == "node-a"
    assert doc["spec"] == {"bgp": {"ipv4Address": "192.168.50.11/24", "ipv6Address": "fd00::b/64"}}
    assert "status" not in doc
    decoded = codecs.decode_node(NODE_KEY, ds.snapshot()[NODE_KEY])
    assert decoded.ipv4_address == ip4("192.168.50.11/24")


def test_ensure_node_without_addresses_creates_an_empty_spec():
    ds = FakeDatastore()
    run(registration.ensure_node(ds, "node-a", None, None))
    assert node_doc(ds)["spec"] == {}


def test_ensure_node_updates_changed_addresses_and_keeps_everything_else():
    ds = FakeDatastore()
    existing = {
        "kind": "Node",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "node-a", "labels": {"zone": "a"}, "uid": "u-1"},
        "spec": {
            "bgp": {"ipv4Address": "10.0.0.1/24", "ipv4IPIPTunnelAddr": "10.65.0.1"},
            "addresses": [{"address": "10.0.0.1/24", "type": "CalicoNodeIP"}],
            "wireguard": {"interfaceIPv4Address": "10.65.0.0"},
            "futureSpec": True,
        },
        "status": {"wireguardPublicKey": "k", "podCIDRs": ["x"]},
    }
    put_json(ds, NODE_KEY, existing)

    assert run(registration.ensure_node(ds, "node-a", ip4("10.0.0.2/24"), None))

    expected = json.loads(json.dumps(existing))
    expected["spec"]["bgp"]["ipv4Address"] = "10.0.0.2/24"
    assert node_doc(ds) == expected


def test_ensure_node_with_unchanged_addresses_writes_nothing():
    ds = FakeDatastore()
    run(registration.ensure_node(ds, "node-a", ip4("10.0.0.1/24"), ip6("fd00::1/64")))
    revision = ds.revision
    # "none" for both families keeps what is there (Calico: keep the existing value).
    assert not run(registration.ensure_node(ds, "node-a", ip4("10.0.0.1/24"), None))
    assert not run(registration.ensure_node(ds, "node-a", None, ip6("FD00:0::1/64")))
    assert ds.revision == revision
    assert node_doc(ds)["spec"]["bgp"]["ipv6Address"] == "fd00::1/64"


def test_ensure_node_retries_a_conflicting_update():
    ds = FakeDatastore()
    run(registration.ensure_node(ds, "node-a", ip4("10.0.0.1/24"), None))
    ds.fail_next(DatastoreOp.TXN)

    assert run(registration.ensure_node(ds, "node-a", ip4("10.0.0.9/24"), None))
    assert node_doc(ds)["spec"]["bgp"]["ipv4Address"] == "10.0.0.9/24"


def test_ensure_node_when_someone_else_creates_it_first_updates_theirs():
    ds = FakeDatastore()
    ds.fail_next(DatastoreOp.TXN)  # our create loses...
    put_json(ds, NODE_KEY, {"kind": "Node", "metadata": {"name": "node-a"}, "spec": {"x": 1}})

    assert run(registration.ensure_node(ds, "node-a", ip4("10.0.0.1/24"), None))
    assert node_doc(ds)["spec"] == {"x": 1, "bgp": {"ipv4Address": "10.0.0.1/24"}}


def test_ensure_node_rejects_a_node_value_that_is_not_an_object():
    ds = FakeDatastore()
    ds.server_put(NODE_KEY, b"[1, 2]")
    with pytest.raises(codecs.ResourceError, match=NODE_KEY):
        run(registration.ensure_node(ds, "node-a", ip4("10.0.0.1/24"), None))


def test_update_node_gives_up_after_repeated_conflicts():
    ds = FakeDatastore()
    run(registration.ensure_node(ds, "node-a", None, None))
    for _ in range(registration.NODE_UPDATE_ATTEMPTS):
        ds.fail_next(DatastoreOp.TXN)
    with pytest.raises(registration.NodeUpdateConflict):
        run(registration.ensure_node(ds, "node-a", ip4("10.0.0.1/24"), None))


# ---- set_tunnel_address --------------------------------------------------------------------------


def test_set_and_clear_tunnel_addresses():
    ds = FakeDatastore()
    run(registration.ensure_node(ds, "node-a", ip4("10.0.0.1/24"), None))
    a4, a6 = ipaddress.ip_address("10.65.0.0"), ipaddress.ip_address("fd00:65::")

    assert run(registration.set_tunnel_address(ds, "node-a", V4, a4))
    assert run(registration.set_tunnel_address(ds, "node-a", V6, a6))
    assert not run(registration.set_tunnel_address(ds, "node-a", V4, a4))
    assert node_doc(ds)["spec"]["wireguard"] == {
        "interfaceIPv4Address": "10.65.0.0",
        "interfaceIPv6Address": "fd00:65::",
    }

    assert run(registration.set_tunnel_address(ds, "node-a", V4, None))
    assert node_doc(ds)["spec"]["wireguard"] == {"interfaceIPv6Address": "fd00:65::"}
    assert run(registration.set_tunnel_address(ds, "node-a", V6, None))
    assert "wireguard" not in node_doc(ds)["spec"]  # omitted when both are empty
    assert node_doc(ds)["spec"]["bgp"] == {"ipv4Address": "10.0.0.1/24"}
    assert not run(registration.set_tunnel_address(ds, "node-a", V6, None))


def test_set_tunnel_address_keeps_unknown_wireguard_fields():
    ds = FakeDatastore()
    put_json(ds, NODE_KEY, {"spec": {"wireguard": {"interfaceIPv4Address": "1.2.3.4", "z": 1}}})
    run(registration.set_tunnel_address(ds, "node-a", V4, None))
    assert node_doc(ds)["spec"]["wireguard"] == {"z": 1}


def test_set_tunnel_address_on_a_missing_node():
    ds = FakeDatastore()
    assert not run(registration.set_tunnel_address(ds, "node-a", V4, None))
    with pytest.raises(registration.NodeNotRegistered):
        run(registration.set_tunnel_address(ds, "node-a", V4, ipaddress.ip_address("10.0.0.1")))
    with pytest.raises(ValueError, match="not an IPv6"):
        run(registration.set_tunnel_address(ds, "node-a", V6, ipaddress.ip_address("10.0.0.1")))


# ---- reconcile_tunnel_address --------------------------------------------------------------------

KEY = PrivateKey.generate().public_key().to_base64()
POOLS = [pool("10.65.0.0/16", name="v4"), pool("fd00:65::/112", name="v6")]


def registered(ds: FakeDatastore, *, v4_key: str | None = KEY, v6_key: str | None = KEY):
    run(registration.ensure_node(ds, "node-a", ip4("10.0.0.1/24"), ip6("fd00::1/64")))
    status = {}
    if v4_key is not None:
        status["wireguardPublicKey"] = v4_key
    if v6_key is not None:
        status["wireguardPublicKeyV6"] = v6_key
    doc = node_doc(ds)
    doc["status"] = status
    put_json(ds, NODE_KEY, doc)


def reconcile(ds, family=V4, *, enabled=True, host_encryption=False, pools=POOLS):
    return run(
        registration.reconcile_tunnel_address(
            ds,
            "node-a",
            family,
            wireguard_enabled=enabled,
            host_encryption=host_encryption,
            pools=pools,
        )
    )


@pytest.mark.parametrize(
    ("family", "field", "expected"),
    [(V4, "interfaceIPv4Address", "10.65.0.0"), (V6, "interfaceIPv6Address", "fd00:65::")],
)
def test_reconcile_allocates_once_the_key_is_published(family, field, expected):
    ds = FakeDatastore()
    registered(ds)

    address = reconcile(ds, family)

    assert str(address) == expected
    assert node_doc(ds)["spec"]["wireguard"] == {field: expected}
    block = ipaddress.ip_network(f"{expected}/{26 if family is V4 else 122}")
    assert addresses_of(block_doc(ds, block), layout.wireguard_handle_id("node-a", family)) == [
        expected
    ]


def test_reconcile_is_stable():
    ds = FakeDatastore()
    registered(ds)
    first = reconcile(ds)
    revision = ds.revision
    assert reconcile(ds) == first
    assert ds.revision == revision


@pytest.mark.parametrize(
    "case",
    ["no key", "zero key", "disabled", "host encryption", "no pool", "pool without Tunnel use"],
)
def test_reconcile_releases_and_clears_when_not_wanted(case):
    ds = FakeDatastore()
    registered(ds)
    address = reconcile(ds)
    assert address is not None
    kwargs: dict[str, Any] = {}
    if case == "no key":
        registered(ds, v4_key=None)
    elif case == "zero key":
        registered(ds, v4_key="A" * 43 + "=")
    elif case == "disabled":
        kwargs["enabled"] = False
    elif case == "host encryption":
        kwargs["host_encryption"] = True
    elif case == "no pool":
        kwargs["pools"] = [POOLS[1]]
    else:
        kwargs["pools"] = [pool("10.65.0.0/16", uses=("Workload",)), POOLS[1]]

    assert reconcile(ds, **kwargs) is None

    assert "wireguard" not in node_doc(ds)["spec"]
    assert layout.ipam_handle_key("wireguard-tunnel-addr-node-a") not in ds.snapshot()
    doc = block_doc(ds, "10.65.0.0/26")
    check_block(doc)
    assert addresses_of(doc, "wireguard-tunnel-addr-node-a") == []


def test_reconcile_without_key_allocates_nothing():
    ds = FakeDatastore()
    registered(ds, v4_key="")
    assert reconcile(ds) is None
    assert not any(k.startswith(layout.IPAM_BLOCKS) for k in ds.snapshot())


def test_reconcile_keeps_an_existing_matching_address():
    ds = FakeDatastore()
    registered(ds)
    block = run(ipam.claim_block(ds, "node-a", V4, POOLS))
    assert block is not None
    doc = block_doc(ds, block)
    # An address allocated earlier (say by Calico) at ordinal 9, with matching attributes but
    # an older handle name: Calico keeps it.
    doc["attributes"] = [
        {
            "handle_id": "old-handle",
            "secondary": {"node": "node-a", "type": "wireguardTunnelAddress"},
        }
    ]
    doc["allocations"][9] = 0
    doc["unallocated"].remove(9)
    doc["sequenceNumberForAllocation"] = {"9": 0}
    put_json(ds, layout.ipam_block_key(block), doc)
    run(registration.set_tunnel_address(ds, "node-a", V4, ipaddress.ip_address("10.65.0.9")))
    revision = ds.revision

    assert reconcile(ds) == ipaddress.ip_address("10.65.0.9")
    assert ds.revision == revision


def test_reconcile_replaces_an_address_that_is_not_ours():
    ds = FakeDatastore()
    registered(ds)
    run(registration.set_tunnel_address(ds, "node-a", V4, ipaddress.ip_address("10.65.0.7")))

    assert reconcile(ds) == ipaddress.ip_address("10.65.0.0")
    assert node_doc(ds)["spec"]["wireguard"]["interfaceIPv4Address"] == "10.65.0.0"


def test_reconcile_moves_the_address_out_of_a_disabled_pool():
    ds = FakeDatastore()
    registered(ds)
    old_pools = [pool("10.1.0.0/16", name="old")]
    assert reconcile(ds, pools=old_pools) == ipaddress.ip_address("10.1.0.0")
    new_pools = [pool("10.1.0.0/16", name="old", disabled=True), pool("10.2.0.0/16", name="new")]

    assert reconcile(ds, pools=new_pools) == ipaddress.ip_address("10.2.0.0")

    assert addresses_of(block_doc(ds, "10.1.0.0/26"), "wireguard-tunnel-addr-node-a") == []
    handle = stored(ds, layout.ipam_handle_key("wireguard-tunnel-addr-node-a"))
    assert handle["block"] == {"10.2.0.0/26": 1}


def test_reconcile_with_a_full_pool_clears_the_address():
    ds = FakeDatastore()
    registered(ds)
    tiny = [pool("10.65.0.0/26")]
    run(ipam.claim_block(ds, "other", V4, tiny))  # takes the only block
    assert reconcile(ds, pools=tiny) is None
    assert "wireguard" not in node_doc(ds)["spec"]


def test_reconcile_needs_a_registered_node():
    ds = FakeDatastore()
    with pytest.raises(registration.NodeNotRegistered):
        reconcile(ds)
