"""Calico's WireGuard Prometheus metrics (`reference-behavior.md` §6.2), rate limited.

The collector reads every WireGuard device it is given and renders:

* ``wireguard_meta`` (gauge, 1 per device; labels hostname, iface, listen_port, public_key);
* ``wireguard_latest_handshake_seconds`` (gauge), ``wireguard_bytes_sent`` and
  ``wireguard_bytes_rcvd`` (counters), per peer, with labels hostname, public_key, peer_key,
  peer_endpoint.

Counters keep Calico's names (no ``_total`` suffix), so dashboards built for Felix work unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from meshcrypt.model.dataplane import Device
from meshcrypt.model.errors import MeshcryptError
from meshcrypt.model.metrics import Labels, MetricFamily, Sample

log = logging.getLogger(__name__)

META_HELP = "wireguard interface and runtime metadata"
HANDSHAKE_HELP = "wireguard interface latest handshake unix timestamp in seconds to a peer"
SENT_HELP = "wireguard interface outgoing bytes count to peer"
RCVD_HELP = "wireguard interface incoming bytes count from peer"


def _labels(**values: str) -> Labels:
    return tuple(sorted(values.items()))


def families_for(hostname: str, devices: Iterable[Device]) -> list[MetricFamily]:
    """The four metric families for a set of devices (pure)."""
    meta: list[Sample] = []
    handshake: list[Sample] = []
    sent: list[Sample] = []
    rcvd: list[Sample] = []
    for device in sorted(devices, key=lambda d: d.name):
        public = device.public_key.to_base64() if device.public_key is not None else ""
        meta_labels = {"hostname": hostname, "iface": device.name}
        meta_labels["listen_port"] = str(device.listen_port)
        if public:
            meta_labels["public_key"] = public
        meta.append(Sample(_labels(**meta_labels), 1.0))
        for peer in sorted(device.peers.values(), key=lambda p: p.public_key.raw):
            peer_labels: dict[str, str] = {
                "hostname": hostname,
                "peer_key": peer.public_key.to_base64(),
                "peer_endpoint": str(peer.endpoint) if peer.endpoint is not None else "",
            }
            if public:
                peer_labels["public_key"] = public
            labels = _labels(**peer_labels)
            handshake.append(Sample(labels, float(int(peer.last_handshake))))
            sent.append(Sample(labels, float(peer.tx_bytes)))
            rcvd.append(Sample(labels, float(peer.rx_bytes)))
    return [
        MetricFamily("wireguard_bytes_rcvd", "counter", RCVD_HELP, tuple(rcvd)),
        MetricFamily("wireguard_bytes_sent", "counter", SENT_HELP, tuple(sent)),
        MetricFamily(
            "wireguard_latest_handshake_seconds", "gauge", HANDSHAKE_HELP, tuple(handshake)
        ),
        MetricFamily("wireguard_meta", "gauge", META_HELP, tuple(meta)),
    ]


class WireguardMetrics:
    """Collects the families at most once per `rate_limit` seconds; in between, the cached result."""

    def __init__(
        self,
        hostname: str,
        devices: Callable[[], Iterable[Device]],
        *,
        rate_limit: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hostname = hostname
        self._devices = devices
        self._rate_limit = rate_limit
        self._clock = clock
        self._cached: list[MetricFamily] | None = None
        self._cached_at = 0.0

    def collect(self) -> list[MetricFamily]:
        now = self._clock()
        if self._cached is not None and now - self._cached_at < self._rate_limit:
            return self._cached
        try:
            devices = list(self._devices())
        except MeshcryptError as exc:
            log.warning("Cannot read WireGuard devices for metrics: %s", exc)
            devices = []
        self._cached = families_for(self._hostname, devices)
        self._cached_at = now
        return self._cached
