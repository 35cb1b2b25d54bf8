"""Scale: 10,000 nodes with one block each. Bounds are loose (a busy 2-core CI machine must pass);
they catch a change in complexity, not a few percent. Measured figures are in the calc report."""

from __future__ import annotations

import ipaddress
import statistics
import time

from meshcrypt.calc import Calculator
from meshcrypt.model.messages import RouteUpdate, WireguardEndpointUpdate
from meshcrypt.model.resources import IPAMBlockResource, NodeResource
from tests.unit.calc.replay import key

N = 10_000
HOSTS = int(ipaddress.IPv4Address("10.0.0.0"))
BLOCKS = int(ipaddress.IPv4Address("10.128.0.0"))


def _node(i: int, key_byte: int = 1, shift: int = 0) -> NodeResource:
    return NodeResource(
        f"node-{i}",
        ipv4_address=ipaddress.IPv4Interface((HOSTS + i + shift, 16)),
        wireguard_ipv4=ipaddress.IPv4Address(BLOCKS + 64 * i + 1),
        public_key=key(key_byte),
    )


def _block(i: int, owner: int) -> IPAMBlockResource:
    return IPAMBlockResource(ipaddress.IPv4Network((BLOCKS + 64 * i, 26)), f"node-{owner}")


def test_ten_thousand_nodes_initial_flush_and_single_node_changes() -> None:
    nodes = [_node(i) for i in range(N)]
    blocks = [_block(i, i) for i in range(N)]
    calc = Calculator("node-0")
    start = time.perf_counter()
    for i in range(N):
        calc.on_node(f"node-{i}", nodes[i])
        calc.on_block(f"b{i}", blocks[i])
    messages = calc.flush()
    initial = time.perf_counter() - start
    # per node: host metadata, endpoint, host route, tunnel route, block route
    assert len(messages) == 5 * N
    assert initial < 5.0, f"initial load of {N} nodes took {initial:.2f}s"

    def one_change(r: int) -> float:
        t0 = time.perf_counter()
        calc.on_node("node-5", _node(5, key_byte=2 + r % 2))
        out = calc.flush()
        elapsed = time.perf_counter() - t0
        assert out == [WireguardEndpointUpdate("node-5", key(2 + r % 2).to_base64(), "10.128.1.65")]
        return elapsed

    def one_move(r: int) -> float:
        t0 = time.perf_counter()
        calc.on_block("b9", _block(9, 10 + r % 2))
        out = calc.flush()
        elapsed = time.perf_counter() - t0
        assert [m.dst_node_name for m in out if isinstance(m, RouteUpdate)] == [
            f"node-{10 + r % 2}"
        ]
        return elapsed

    # Recomputing everything costs about as much as the initial flush (~0.3 s here); a change
    # proportional to one node costs tens of microseconds.
    for measure in (one_change, one_move):
        median = statistics.median(measure(r) for r in range(21))
        assert median < 0.005, f"{measure.__name__}: {median * 1e3:.2f} ms for one node"
