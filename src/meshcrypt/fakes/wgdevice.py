"""WireGuard device state and the semantics of one configuration call.

They follow the kernel module and wireguard-go: settings first (fwmark, listen port), then
`replace_peers`, then the private key (a peer holding the device's own public key is dropped), then each
peer in order. An allowed IP given to a peer leaves whichever other peer of the device held it.

Unlike the real implementations the call is atomic: it is validated as a whole before anything changes.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshcrypt.fakes.invariants import InvariantViolation
from meshcrypt.model.dataplane import Device, DeviceConfig, Peer, PeerConfig
from meshcrypt.model.errors import kernel_error
from meshcrypt.model.keys import Key, PrivateKey
from meshcrypt.model.net import CIDR

_MAX_PORT = 0xFFFF
_MAX_FWMARK = 0xFFFFFFFF
_MAX_KEEPALIVE = 0xFFFF


@dataclass(slots=True)
class DeviceState:
    """The mutable state of one WireGuard device inside the fake kernel."""

    private_key: PrivateKey | None = None
    public_key: Key | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: dict[Key, Peer] = field(default_factory=dict)

    def snapshot(self, name: str) -> Device:
        return Device(
            name=name,
            private_key=self.private_key,
            public_key=self.public_key,
            listen_port=self.listen_port,
            fwmark=self.fwmark,
            peers=dict(self.peers),
        )

    def copy(self) -> DeviceState:
        return dataclasses.replace(self, peers=dict(self.peers))

    def set_private_key(self, key: PrivateKey | None) -> None:
        """Store a key as WireGuard does (clamped); the zero key or None clears it."""
        if key is None or key.is_zero:
            self.private_key = None
            self.public_key = None
            return
        self.private_key = key.clamped()
        self.public_key = key.public_key()
        # The kernel and wireguard-go never keep a peer with the device's own public key.
        self.peers.pop(self.public_key, None)


def apply_config(
    state: DeviceState, config: DeviceConfig, *, enforce_invariants: bool
) -> DeviceState:
    """The device after `config`; `state` is left untouched. Raises before any change."""
    check_invariants(state, config, enforce=enforce_invariants)
    _validate_values(config)
    new = state.copy()
    if config.fwmark is not None:
        new.fwmark = config.fwmark
    if config.listen_port is not None:
        new.listen_port = config.listen_port
    if config.replace_peers:
        new.peers.clear()
    if config.private_key is not None:
        new.set_private_key(config.private_key)
    owners = _allowed_ip_owners(new.peers.values())
    for peer_config in config.peers:
        _apply_peer(new, peer_config, owners)
    return new


def check_invariants(state: DeviceState, config: DeviceConfig, *, enforce: bool) -> None:
    """The rules the reference mock enforces on every configuration call."""
    seen: set[Key] = set()
    for peer in config.peers:
        if peer.public_key.is_zero:
            raise InvariantViolation("configure with the zero peer key")
        if peer.public_key in seen:
            raise InvariantViolation(f"peer {peer.public_key} appears twice in one configure call")
        seen.add(peer.public_key)
        if not enforce:
            continue
        exists = peer.public_key in state.peers and not config.replace_peers
        if (peer.remove or peer.update_only) and not exists:
            what = "remove" if peer.remove else "update_only"
            raise InvariantViolation(f"{what} for peer {peer.public_key} not on the device")


def _validate_values(config: DeviceConfig) -> None:
    """Out-of-range values: EINVAL, as both the kernel and wireguard-go answer."""
    if config.listen_port is not None and not 0 <= config.listen_port <= _MAX_PORT:
        raise kernel_error(f"listen port {config.listen_port}", errno.EINVAL)
    if config.fwmark is not None and not 0 <= config.fwmark <= _MAX_FWMARK:
        raise kernel_error(f"fwmark {config.fwmark}", errno.EINVAL)
    for peer in config.peers:
        keepalive = peer.persistent_keepalive
        if keepalive is not None and not 0 <= keepalive <= _MAX_KEEPALIVE:
            raise kernel_error(f"persistent keepalive {keepalive}", errno.EINVAL)
        if peer.endpoint is not None and not 0 <= peer.endpoint.port <= _MAX_PORT:
            raise kernel_error(f"endpoint {peer.endpoint}", errno.EINVAL)


def _allowed_ip_owners(peers: Iterable[Peer]) -> dict[CIDR, Key]:
    return {cidr: peer.public_key for peer in peers for cidr in peer.allowed_ips}


def _apply_peer(state: DeviceState, config: PeerConfig, owners: dict[CIDR, Key]) -> None:
    key = config.public_key
    existing = state.peers.get(key)
    if config.remove:
        if existing is not None:
            _drop_peer(state, key, owners)
        return
    if key == state.public_key:
        return  # both implementations silently ignore a peer with the device's own key
    if existing is None:
        if config.update_only:
            return
        existing = Peer(public_key=key)
    allowed = set(existing.allowed_ips)
    if config.replace_allowed_ips:
        for cidr in allowed:
            owners.pop(cidr, None)
        allowed.clear()
    for cidr in config.allowed_ips:
        owner = owners.get(cidr)
        if owner is not None and owner != key:
            other = state.peers[owner]
            state.peers[owner] = dataclasses.replace(other, allowed_ips=other.allowed_ips - {cidr})
        owners[cidr] = key
        allowed.add(cidr)
    state.peers[key] = dataclasses.replace(
        existing,
        endpoint=config.endpoint if config.endpoint is not None else existing.endpoint,
        persistent_keepalive=(
            config.persistent_keepalive
            if config.persistent_keepalive is not None
            else existing.persistent_keepalive
        ),
        allowed_ips=frozenset(allowed),
    )


def _drop_peer(state: DeviceState, key: Key, owners: dict[CIDR, Key]) -> None:
    peer = state.peers.pop(key)
    for cidr in peer.allowed_ips:
        if owners.get(cidr) == key:
            del owners[cidr]
