"""`lab up`: build the lab step by step, recording each step before taking it.

Order, and why:

1. the bridge and the forwarding guard (root namespace);
2. the nodes: namespaces with their holder, sysctls, the underlay veth into the bridge — before etcd,
   because the bridge's IPv6 address is only usable once a port gives the bridge carrier;
3. etcd, on the bridge addresses and on loopback;
4. the datastore: pools and FelixConfiguration, then each node's block (claimed in node order, so
   node1 gets the lowest), pod addresses and WorkloadEndpoints — as operator and CNI plugin would;
5. the pods (namespaces, veths, routes) and BIRD's routes between the nodes' blocks;
6. the agents, then the wait until they agree.

A failure in steps 1–5 removes everything again (`down`); a failure to converge leaves the lab up
for inspection.
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Callable
from pathlib import Path

from meshcrypt.adapters import lab_etcd, lab_net
from meshcrypt.adapters.lab_proc import ProcessId
from meshcrypt.adapters.nodens import NodeCommandError, SimNode
from meshcrypt.lab import agents
from meshcrypt.lab.cluster import (
    add_pod,
    claim_blocks,
    felix_configuration_spec,
    with_datastore,
    write_cluster,
)
from meshcrypt.lab.config import (
    DEFAULT_PREFIX,
    ETCD_PORT,
    LabConfig,
    LabError,
    cali_name,
    pod_name,
    url,
)
from meshcrypt.lab.down import down, lab_command, lab_leftovers
from meshcrypt.lab.state import EtcdRecord, LabState, NodeRecord, PodRecord
from meshcrypt.model.net import IPFamily
from meshcrypt.ports import Datastore

Say = Callable[[str], None]

_TOOLS = ("ip", "nsenter", "unshare", "etcd", "sh")
_AGENT_TOOLS = ("wg",)


def up(config: LabConfig, lab_dir: Path, say: Say) -> LabState:
    """Bring a lab up in `lab_dir` (the agents converged, unless `config.agents` is off)."""
    config.validate()
    _check_tools(config)
    _refuse_existing(config, lab_dir)
    lab_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    state = LabState(dir=lab_dir, config=config)
    state.save()
    say(f"lab folder {lab_dir} (state in {state.path}), prefix {config.prefix}")
    try:
        _build(state, say)
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {exc}"
        say(f"{reason}; removing what was created")
        down(lab_dir, config.prefix, lambda line: say(f"  {line}"))
        raise
    if config.agents:
        for node in state.nodes:
            proc = agents.start_agent(state, node)
            say(f"{node.name}: agent pid {proc.pid}, log {state.agent_log(node.name)}")
        say(f"waiting for the agents to converge (up to {config.converge_timeout:g} s)")
        took = agents.wait_converged(state, config.converge_timeout, say)
        peers = len(state.nodes) - 1
        say(f"converged in {took:.1f} s: every node has {peers} peer(s), every key is published")
    return state


def _check_tools(config: LabConfig) -> None:
    needed = list(_TOOLS) + (list(_AGENT_TOOLS) if config.agents else [])
    if config.agents and config.backend != "kernel":
        needed.append("wireguard-go")
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise LabError(f"the lab needs {', '.join(missing)} on PATH (./dev setup installs them)")


def _refuse_existing(config: LabConfig, lab_dir: Path) -> None:
    existing = LabState.load(lab_dir)
    down_cmd = lab_command(lab_dir, "down")
    if existing is not None:
        raise LabError(
            f"a lab already exists in {lab_dir} (created {existing.created}); "
            f"remove it with `{down_cmd}`"
        )
    if lab_dir.exists() and any(lab_dir.iterdir()):
        raise LabError(
            f"{lab_dir} is not empty but holds no lab state (left by a crashed lab?); "
            f"`{down_cmd}` removes the lab's files, or choose another --dir"
        )
    leftovers = lab_leftovers(config, lab_dir)
    if leftovers:
        prefix = "" if config.prefix == DEFAULT_PREFIX else f" --prefix {config.prefix}"
        raise LabError(
            f"leftovers of a lab with prefix {config.prefix} exist ({'; '.join(leftovers)}); "
            f"remove them with `{down_cmd}{prefix}`"
        )
    _check_underlay_free(config)


def _check_underlay_free(config: LabConfig, ours: str | None = None) -> None:
    """No link but `ours` has an address in the underlay networks."""
    for family in config.families:
        net = config.underlay(family)
        for link, address in lab_net.addresses_in_use():
            if link != ours and address.version == net.version and address.network.overlaps(net):
                raise LabError(
                    f"the underlay {net} is in use on this host ({address} on {link}); "
                    "choose another with --underlay / --underlay6"
                )


def _build(state: LabState, say: Say) -> None:
    config = state.config
    families = config.families
    bridge_addresses = [config.bridge_address(f) for f in families]
    state.bridge = config.bridge
    state.save()
    lab_net.create_bridge(config.bridge, bridge_addresses)
    # Again now that ours exists: a lab started at the same moment may have taken it meanwhile.
    _check_underlay_free(config, ours=config.bridge)
    say(f"bridge {config.bridge}: {', '.join(str(a) for a in bridge_addresses)}")
    _guard(state, say)

    for index, name in enumerate(config.node_names(), start=1):
        _add_node(state, index, name)
        node = state.nodes[-1]
        say(f"{name}: netns {node.netns}, eth0 {', '.join(node.addresses)}")

    _start_etcd(state, say)
    _fill_datastore(state, say)

    for pod in state.pods:
        _wire_pod(state, pod)
    for node in state.nodes:
        pods = ", ".join(f"{p.name} {' '.join(p.addresses)}" for p in state.pods_of(node.name))
        say(f"{node.name}: block {', '.join(node.blocks)}" + (f"; pods {pods}" if pods else ""))
    _bird_routes(state)
    say("routes: every node reaches the other nodes' blocks through their underlay address")


def _guard(state: LabState, say: Say) -> None:
    table, bridge = state.config.guard_table, state.config.bridge
    state.guard = table
    state.save()
    try:
        lab_net.install_forward_guard(table, bridge)
    except (NodeCommandError, OSError) as exc:
        state.guard = None
        state.save()
        forwarding = (
            "on: nodes' stray traffic may be routed out" if lab_net.host_forwarding() else "off"
        )
        say(f"warning: no nftables guard on {bridge} ({exc}); host IPv4 forwarding is {forwarding}")
        return
    say(f"nftables table inet {table}: the host routes nothing into or out of {bridge}")


def _add_node(state: LabState, index: int, name: str) -> None:
    config = state.config
    addresses = [config.node_address(f, index) for f in config.families]
    node = NodeRecord(
        name=name,
        index=index,
        netns=config.netns(name),
        host_ifname=config.host_ifname(index),
        addresses=[str(a) for a in addresses],
    )
    state.nodes.append(node)
    state.save()
    sim = SimNode.create(name, netns=node.netns)
    node.holder = ProcessId.of(sim.holder_pid)
    state.save()
    lab_net.set_sysctls(
        node.netns,
        {
            "net/ipv4/ip_forward": "1",
            "net/ipv6/conf/all/forwarding": "1",
            # Links made later (the pods' host ends) skip duplicate address detection.
            "net/ipv6/conf/default/accept_dad": "0",
            "net/ipv6/conf/all/accept_dad": "0",
            # Loose reverse-path filtering: strict mode breaks host encryption (ARP replies
            # would be checked against the WireGuard table).
            "net/ipv4/conf/all/rp_filter": "2",
            "net/ipv4/conf/default/rp_filter": "2",
        },
    )
    gateways = [config.bridge_address(f).ip for f in config.families]
    lab_net.attach_node(node.netns, node.host_ifname, config.bridge, addresses, gateways)


def _start_etcd(state: LabState, say: Say) -> None:
    config = state.config
    host = f"http://127.0.0.1:{lab_etcd.free_port()}"
    on_bridge = [url(config.bridge_address(f).ip, ETCD_PORT) for f in config.families]
    state.etcd = EtcdRecord(
        data_dir=str(state.dir / "etcd"),
        log=str(state.dir / "etcd.log"),
        client_urls=[*on_bridge, host],
        node_endpoint=config.etcd_node_endpoint(),
        host_endpoint=host,
        peer_url=f"http://127.0.0.1:{lab_etcd.free_port()}",
    )
    state.save()
    try:
        state.etcd.process = lab_etcd.start_etcd(
            name=config.prefix,
            data_dir=Path(state.etcd.data_dir),
            client_urls=state.etcd.client_urls,
            peer_url=state.etcd.peer_url,
            log_path=Path(state.etcd.log),
            health_url=host,
        )
    except lab_etcd.EtcdStartError as exc:
        raise LabError(str(exc)) from exc
    state.save()
    say(f"etcd pid {state.etcd.process.pid}: {', '.join(state.etcd.client_urls)}")


def _fill_datastore(state: LabState, say: Say) -> None:
    config = state.config
    for node in state.nodes:
        for j in range(1, config.pods_per_node + 1):
            pod = pod_name(node.name, j)
            state.pods.append(PodRecord(pod, node.name, config.netns(pod), cali_name(pod)))

    async def fill(datastore: Datastore) -> None:
        pools = await write_cluster(datastore, config)
        for pool in pools:
            say(f"IPPool {pool.name}: {pool.cidr}, /{pool.block_size} blocks")
        say(
            "FelixConfiguration default: "
            + ", ".join(
                f"{k}={str(v).lower()}" for k, v in felix_configuration_spec(config).items()
            )
        )
        for node in state.nodes:
            blocks = await claim_blocks(datastore, node.name, config.families, pools)
            node.blocks = [str(b) for b in blocks]
            for pod in state.pods_of(node.name):
                addresses = await add_pod(
                    datastore,
                    prefix=config.prefix,
                    node=node.name,
                    pod=pod.name,
                    ifname=pod.ifname,
                    blocks=blocks,
                )
                pod.addresses = [str(a) for a in addresses]

    assert state.etcd is not None
    with_datastore(state.etcd.host_endpoint, fill)
    state.save()


def _wire_pod(state: LabState, pod: PodRecord) -> None:
    node = state.node(pod.node)
    lab_net.create_netns(pod.netns)
    if IPFamily.V6 in state.config.families:
        lab_net.set_sysctls(pod.netns, {"net/ipv6/conf/default/accept_dad": "0"})
    addresses = [ipaddress.ip_address(a) for a in pod.addresses]
    lab_net.attach_pod(node.netns, pod.netns, pod.ifname, addresses, state.config.pod_mtu)


def _bird_routes(state: LabState) -> None:
    """What BIRD would program: a route to each other node's blocks via that node's underlay
    address, and a blackhole for the node's own blocks."""
    for node in state.nodes:
        routes = [lab_net.BirdRoute(ipaddress.ip_network(b)) for b in node.blocks]
        for other in state.nodes:
            if other is node:
                continue
            via = {i.version: i.ip for i in map(ipaddress.ip_interface, other.addresses)}
            for block in map(ipaddress.ip_network, other.blocks):
                routes.append(lab_net.BirdRoute(block, via[block.version]))
        lab_net.add_routes(node.netns, routes)
