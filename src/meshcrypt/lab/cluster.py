"""The lab's writes to the datastore: what an operator and Calico's CNI plugin would put there.

- the operator: one `IPPool` per family and `FelixConfiguration default` with WireGuard on;
- the CNI plugin: each node's IPAM block, claimed with the same atomic `claim_block` the agent uses
  (so the agent finds its block instead of claiming one), one IPAM allocation per pod and family
  (handle `k8s-pod-network.<container id>`, `-v6` appended for IPv6, with the plugin's attributes),
  and a `WorkloadEndpoint` per pod.

`Node` resources are not written here: the agents register their nodes themselves.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from meshcrypt.adapters.etcd import EtcdDatastore
from meshcrypt.datastore import codecs, ipam, layout
from meshcrypt.lab.config import POD_NAMESPACE, POOLS, LabConfig, LabError
from meshcrypt.model.net import CIDR, IPAddress, IPFamily
from meshcrypt.model.resources import IPPoolResource, NodeResource
from meshcrypt.ports import Datastore

T = TypeVar("T")


def with_datastore(endpoint: str, work: Callable[[Datastore], Awaitable[T]]) -> T:
    """Run `work` against the lab's etcd in a fresh event loop."""

    async def main() -> T:
        datastore = EtcdDatastore([endpoint])
        try:
            return await work(datastore)
        finally:
            await datastore.close()

    return asyncio.run(main())


def _resource(kind: str, metadata: dict[str, object], spec: dict[str, object]) -> bytes:
    meta = {
        **metadata,
        "uid": str(uuid.uuid4()),
        "creationTimestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    doc = {"kind": kind, "apiVersion": "projectcalico.org/v3", "metadata": meta, "spec": spec}
    return json.dumps(doc, separators=(",", ":")).encode()


def felix_configuration_spec(config: LabConfig) -> dict[str, object]:
    return {
        "wireguardEnabled": IPFamily.V4 in config.families,
        "wireguardEnabledV6": IPFamily.V6 in config.families,
        "wireguardHostEncryptionEnabled": config.host_encryption,
    }


def ip_pool_spec(family: IPFamily) -> dict[str, object]:
    _, cidr, block_size = POOLS[family]
    return {
        "cidr": str(cidr),
        "blockSize": block_size,
        "ipipMode": "Never",
        "vxlanMode": "Never",
        "natOutgoing": False,
        "nodeSelector": "all()",
        "allowedUses": ["Workload", "Tunnel"],
    }


async def write_cluster(datastore: Datastore, config: LabConfig) -> list[IPPoolResource]:
    """The pools and the default FelixConfiguration, in one transaction; the pools as decoded."""
    puts: dict[str, bytes] = {}
    for family in config.families:
        name = POOLS[family][0]
        puts[layout.ip_pool_key(name)] = _resource("IPPool", {"name": name}, ip_pool_spec(family))
    default = layout.DEFAULT_FELIX_CONFIGURATION
    puts[layout.felix_configuration_key(default)] = _resource(
        "FelixConfiguration", {"name": default}, felix_configuration_spec(config)
    )
    if not await datastore.txn(dict.fromkeys(puts, 0), puts):
        raise LabError("the lab's etcd already holds IP pools or a FelixConfiguration")
    return [codecs.decode_ip_pool(key, value) for key, value in puts.items() if "/ippools/" in key]


async def claim_blocks(
    datastore: Datastore, node: str, families: Sequence[IPFamily], pools: Sequence[IPPoolResource]
) -> list[CIDR]:
    """The node's block of each family (claimed now, or the one it already has)."""
    blocks: list[CIDR] = []
    for family in families:
        block = await ipam.claim_block(datastore, node, family, pools)
        if block is None:
            raise LabError(f"no free {family.label} IPAM block for {node}")
        blocks.append(block)
    return blocks


def container_id(prefix: str, pod: str) -> str:
    """A stable stand-in for the pod's container ID (64 hex digits, like a container runtime's)."""
    return hashlib.sha256(f"{prefix}/{pod}".encode()).hexdigest()


async def add_pod(
    datastore: Datastore,
    *,
    prefix: str,
    node: str,
    pod: str,
    ifname: str,
    blocks: Sequence[CIDR],
) -> list[IPAddress]:
    """Allocate the pod's address in each of the node's blocks and write its WorkloadEndpoint."""
    cid = container_id(prefix, pod)
    secondary = {
        "namespace": POD_NAMESPACE,
        "node": node,
        "pod": pod,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
    }
    addresses: list[IPAddress] = []
    for block in blocks:
        suffix = "" if IPFamily.of(block) is IPFamily.V4 else "-v6"
        handle = f"k8s-pod-network.{cid}{suffix}"
        addresses.append(
            await ipam.allocate_address(
                datastore, node, block, handle, secondary, what=f"the address of pod {pod}"
            )
        )
    name = workload_endpoint_name(node, pod)
    spec: dict[str, object] = {
        "orchestrator": "k8s",
        "node": node,
        "containerID": cid,
        "pod": pod,
        "endpoint": "eth0",
        "interfaceName": ifname,
        "ipNetworks": [f"{a}/{a.max_prefixlen}" for a in addresses],
        "profiles": [f"kns.{POD_NAMESPACE}"],
    }
    metadata: dict[str, object] = {
        "name": name,
        "namespace": POD_NAMESPACE,
        "labels": {
            "projectcalico.org/namespace": POD_NAMESPACE,
            "projectcalico.org/orchestrator": "k8s",
        },
    }
    key = layout.workload_endpoint_key(POD_NAMESPACE, name)
    await datastore.txn({}, {key: _resource("WorkloadEndpoint", metadata, spec)})
    return addresses


def workload_endpoint_name(node: str, pod: str) -> str:
    """Calico's name for a Kubernetes pod's endpoint: dashes in each part doubled."""

    def escape(part: str) -> str:
        return part.replace("-", "--")

    return f"{escape(node)}-k8s-{escape(pod)}-eth0"


async def read_nodes(datastore: Datastore) -> dict[str, NodeResource]:
    """Every Node resource that decodes (the others are left out)."""
    listed, _ = await datastore.list_prefix(layout.NODES)
    nodes: dict[str, NodeResource] = {}
    for kv in listed:
        try:
            node = codecs.decode_node(kv.key, kv.value)
        except codecs.ResourceError:
            continue
        nodes[node.name] = node
    return nodes
