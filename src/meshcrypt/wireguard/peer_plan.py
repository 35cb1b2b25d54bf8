"""Pure planning of WireGuard device configuration: full resync and delta.

Both return `DeviceConfig` values; the manager executes them. Each peer key appears at most once per
configuration, removals are planned only for peers on the device, and a zero key is never a peer.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from meshcrypt.model.dataplane import Device, DeviceConfig, Endpoint, Peer, PeerConfig
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import CIDR
from meshcrypt.wireguard.node_state import NodeCache, NodeData, NodeUpdate


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """Cluster-wide peer settings of one family."""

    listening_port: int
    keepalive: int
    firewall_mark: int


def _cidr_order(cidr: CIDR) -> tuple[int, int]:
    return (int(cidr.network_address), cidr.prefixlen)


def _sorted(cidrs: Collection[CIDR]) -> tuple[CIDR, ...]:
    if len(cidrs) < 2:  # most peers have one CIDR: nothing to sort (10,000 of them at a resync)
        return tuple(cidrs)
    return tuple(sorted(cidrs, key=_cidr_order))


def _endpoint(node: NodeData, settings: PeerSettings) -> Endpoint:
    assert node.endpoint is not None
    return Endpoint(node.endpoint, settings.listening_port)


def full_peer(node: NodeData, settings: PeerSettings) -> PeerConfig:
    """A peer added from scratch: endpoint, keepalive, and its complete allowed IPs."""
    return PeerConfig(
        public_key=node.public_key,
        endpoint=_endpoint(node, settings),
        persistent_keepalive=settings.keepalive,
        replace_allowed_ips=True,
        allowed_ips=_sorted(node.cidrs),
    )


@dataclass(frozen=True, slots=True)
class ResyncPlan:
    config: DeviceConfig
    public_key: Key  # the device's public key after the config is applied
    programmed: dict[str, Key]  # node name -> key it is programmed under afterwards


def plan_resync(
    device: Device,
    cache: NodeCache,
    settings: PeerSettings,
    new_private_key: PrivateKey | None,
) -> ResyncPlan:
    """Compare the device with the cache and correct everything: port, mark, key, peers.

    `new_private_key` is used only when the device has no private key yet.
    """
    private_key: PrivateKey | None = None
    public_key = device.public_key
    if device.private_key is None or device.private_key.is_zero or public_key is None:
        assert new_private_key is not None, "a device without a key needs a new private key"
        private_key = new_private_key
        public_key = new_private_key.public_key()
    peers: list[PeerConfig] = []
    programmed: dict[str, Key] = {}
    for key, peer in device.peers.items():
        owners = cache.owners(key)
        name = next(iter(owners)) if len(owners) == 1 else None
        if name is None or not cache.should_program(name):
            peers.append(PeerConfig(public_key=key, remove=True))
            continue
        programmed[name] = key
        fix = _correct_peer(peer, cache.nodes[name], settings)
        if fix is not None:
            peers.append(fix)
    for name, node in cache.nodes.items():
        if node.public_key not in device.peers and cache.should_program(name):
            peers.append(full_peer(node, settings))
            programmed[name] = node.public_key
    config = DeviceConfig(
        private_key=private_key,
        listen_port=settings.listening_port
        if device.listen_port != settings.listening_port
        else None,
        fwmark=settings.firewall_mark if device.fwmark != settings.firewall_mark else None,
        peers=tuple(peers),
    )
    return ResyncPlan(config=config, public_key=public_key, programmed=programmed)


def _correct_peer(peer: Peer, node: NodeData, settings: PeerSettings) -> PeerConfig | None:
    """The update that makes a device peer match its node, or None when it already does."""
    replace = bool(peer.allowed_ips - node.cidrs)
    missing = node.cidrs - peer.allowed_ips
    expected = _endpoint(node, settings)
    endpoint = expected if peer.endpoint != expected else None
    keepalive_wrong = peer.persistent_keepalive != settings.keepalive
    if not replace and not missing and endpoint is None and not keepalive_wrong:
        return None
    return PeerConfig(
        public_key=peer.public_key,
        update_only=True,
        endpoint=endpoint,
        persistent_keepalive=settings.keepalive,
        replace_allowed_ips=replace,
        allowed_ips=_sorted(node.cidrs if replace else missing),
    )


@dataclass(frozen=True, slots=True)
class DeltaPlan:
    removals: DeviceConfig  # applied first, so a key can move between nodes in one apply
    updates: DeviceConfig
    programmed: dict[str, Key | None]  # node name -> key it is programmed under afterwards


def plan_delta(
    touched: Iterable[str],
    cache: NodeCache,
    pending: dict[str, NodeUpdate],
    settings: PeerSettings,
) -> DeltaPlan:
    """Peer changes for the nodes touched by this batch, given the device matches the cache."""
    removals: list[PeerConfig] = []
    updates: list[PeerConfig] = []
    programmed: dict[str, Key | None] = {}
    for name in sorted(touched):
        node = cache.nodes.get(name)
        if node is None:
            continue
        should = cache.should_program(name)
        current = node.programmed_key
        if current is not None and (not should or current != node.public_key):
            removals.append(PeerConfig(public_key=current, remove=True))
            current = None
        if should:
            if current is None:
                updates.append(full_peer(node, settings))
            else:
                change = _delta_peer(node, pending.get(name), settings)
                if change is not None:
                    updates.append(change)
            current = node.public_key
        if current != node.programmed_key:
            programmed[name] = current
    return DeltaPlan(
        removals=DeviceConfig(peers=tuple(removals)),
        updates=DeviceConfig(peers=tuple(updates)),
        programmed=programmed,
    )


def _delta_peer(
    node: NodeData, update: NodeUpdate | None, settings: PeerSettings
) -> PeerConfig | None:
    if update is None:
        return None
    endpoint = _endpoint(node, settings) if update.endpoint is not None else None
    if update.cidrs_deleted:
        replace, cidrs = True, node.cidrs
    else:
        replace, cidrs = False, update.cidrs_added & node.cidrs
    if endpoint is None and not replace and not cidrs:
        return None
    return PeerConfig(
        public_key=node.public_key,
        update_only=True,
        endpoint=endpoint,
        persistent_keepalive=settings.keepalive,
        replace_allowed_ips=replace,
        allowed_ips=_sorted(cidrs),
    )
