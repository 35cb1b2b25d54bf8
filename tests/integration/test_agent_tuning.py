"""Persistent keepalive and threaded NAPI with real agents on wireguard-go.

Keepalive (`wireguardKeepAlive`) shows in `wg show` on every peer and follows configuration changes.
Threaded NAPI (`wireguardThreadingEnabled`) cannot be set on wireguard-go's TUN device (the kernel
answers EOPNOTSUPP): that is said once in the agent's log, not at every apply, resync or rebuild of
the manager (Calico #10339). The kernel backend's side is tests/vm/test_kernel_threading.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.cluster import IFACE, AgentNode, cluster, wait_for
from tests.integration.test_agent import converged, http_get

pytestmark = pytest.mark.integration

NAPI_WARNING = "threaded NAPI is not supported here"


def full_resyncs(node: AgentNode) -> int:
    status, body = http_get(node, 9091, "/metrics")
    assert status == 200
    match = re.search(r"^meshcrypt_full_resync_seconds_count (\d+)", body, re.MULTILINE)
    return int(match.group(1)) if match else 0


def test_keepalive_shows_in_wg_show_and_napi_refusal_is_logged_once(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.set_felix(**c.wireguard_spec(wireguardThreadingEnabled=True, wireguardKeepAlive="25s"))
        nodes = [
            c.add_node(n, FELIX_ROUTEREFRESHINTERVAL="1", FELIX_PROMETHEUSMETRICSENABLED="true")
            for n in ("n1", "n2")
        ]
        wait_for("convergence", lambda: converged(c, nodes), timeout=60)

        def keepalive_shown(node: AgentNode, seconds: int) -> bool:
            text = node.sh("wg", "show", IFACE)
            return f"persistent keepalive: every {seconds} seconds" in text

        for node in nodes:
            wait_for(f"{node.name}: keepalive 25 s in wg show", keepalive_shown, node, 25)
        # Two configuration changes (each rebuilds the manager) and resyncs every second.
        for seconds in (7, 9):
            c.set_felix(
                **c.wireguard_spec(wireguardThreadingEnabled=True, wireguardKeepAlive=f"{seconds}s")
            )
            for node in nodes:
                wait_for(
                    f"{node.name}: keepalive {seconds} s in wg show", keepalive_shown, node, seconds
                )
        for node in nodes:
            start = full_resyncs(node)
            wait_for(
                f"{node.name}: five more resyncs",
                lambda n=node, s=start: full_resyncs(n) >= s + 5,
            )
        for node in nodes:
            log = node.log()
            napi = [line for line in log.splitlines() if "NAPI" in line]
            assert log.count(NAPI_WARNING) == 1, napi
            assert node.sh("cat", f"/sys/class/net/{IFACE}/threaded").strip() == "0"
            assert node.alive
