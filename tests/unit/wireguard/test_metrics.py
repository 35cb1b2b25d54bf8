"""Scenario §5.9: Calico's WireGuard metrics, rate limited, rendered exactly."""

from __future__ import annotations

import ipaddress

from meshcrypt.fakes import FakeClock, FakeKernel
from meshcrypt.model.dataplane import DeviceConfig, Endpoint, PeerConfig
from meshcrypt.model.keys import PrivateKey
from meshcrypt.model.metrics import render
from meshcrypt.wireguard.metrics import WireguardMetrics


def test_metrics_rate_limited_and_rendered() -> None:  # 65
    kernel = FakeKernel()
    kernel.add_link("wireguard.cali", kind="wireguard", up=True)
    private = PrivateKey.generate()
    ours, theirs = private.public_key(), PrivateKey.generate().public_key()
    endpoint = Endpoint(ipaddress.ip_address("10.0.0.2"), 1002)
    wg = kernel.new_wireguard_client()
    wg.configure(
        "wireguard.cali",
        DeviceConfig(
            private_key=private,
            listen_port=51820,
            peers=(PeerConfig(theirs, endpoint=endpoint),),
        ),
    )
    clock = FakeClock()
    metrics = WireguardMetrics(
        "node-h",
        lambda: [kernel.device("wireguard.cali")],
        rate_limit=0.1,
        clock=clock.monotonic,
    )
    kernel.record_traffic("wireguard.cali", theirs, rx_bytes=1024, tx_bytes=1024)
    first = metrics.collect()
    assert [f.name for f in first] == [
        "wireguard_bytes_rcvd",
        "wireguard_bytes_sent",
        "wireguard_latest_handshake_seconds",
        "wireguard_meta",
    ]
    kernel.record_traffic(
        "wireguard.cali", theirs, rx_bytes=512, tx_bytes=512, handshake_at=1_700_000_000.5
    )
    clock.advance(0.05)
    assert metrics.collect() is first  # within the rate limit: cached
    clock.advance(0.051)
    second = metrics.collect()
    assert second != first
    labels = (
        f'hostname="node-h",peer_endpoint="10.0.0.2:1002",peer_key="{theirs}",public_key="{ours}"'
    )
    assert render(second) == "\n".join(
        [
            "# HELP wireguard_bytes_rcvd wireguard interface incoming bytes count from peer",
            "# TYPE wireguard_bytes_rcvd counter",
            f"wireguard_bytes_rcvd{{{labels}}} 1536",
            "# HELP wireguard_bytes_sent wireguard interface outgoing bytes count to peer",
            "# TYPE wireguard_bytes_sent counter",
            f"wireguard_bytes_sent{{{labels}}} 1536",
            "# HELP wireguard_latest_handshake_seconds wireguard interface latest handshake unix"
            " timestamp in seconds to a peer",
            "# TYPE wireguard_latest_handshake_seconds gauge",
            f"wireguard_latest_handshake_seconds{{{labels}}} 1700000000",
            "# HELP wireguard_meta wireguard interface and runtime metadata",
            "# TYPE wireguard_meta gauge",
            f'wireguard_meta{{hostname="node-h",iface="wireguard.cali",listen_port="51820",'
            f'public_key="{ours}"}} 1',
            "",
        ]
    )


def test_metrics_survive_a_failing_backend() -> None:
    from meshcrypt.model.errors import KernelError

    def broken() -> list[object]:
        raise KernelError("socket gone", 5)

    metrics = WireguardMetrics("n", broken, rate_limit=0)  # type: ignore[arg-type]
    families = metrics.collect()
    assert all(f.samples == () for f in families)
