"""The operator commands inside nodes run by real agents (`tests/integration/cluster.py`).

Here the commands run as an operator would run them on a node: `nsenter -t <holder> -m -n meshcrypt
…`, with etcd reachable over the node's underlay. Doctor's expectations (computed with the agent's
calculation) must match what the running agent actually programmed, MTU auto-detection, IPAM blocks
and tunnel addresses included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import AgentNode, Cluster, cluster, wait_for
from tests.integration.test_agent import converged

pytestmark = pytest.mark.integration


def meshcrypt(c: Cluster, node: AgentNode, *argv: str) -> str:
    return node.sim.run(
        sys.executable,
        "-m",
        "meshcrypt",
        *argv,
        "--etcd-endpoints",
        c.etcd_url,
        check=False,
    )


def test_doctor_and_status_agree_with_running_agents(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        nodes = [c.add_node(name) for name in ("n1", "n2", "n3")]
        wait_for("the agents to converge", lambda: converged(c, nodes), timeout=60)
        n1 = nodes[0]

        # Peers converge first; the table's last routes may follow an apply later.
        def all_pass() -> dict[str, Any] | None:
            found: dict[str, Any] = json.loads(meshcrypt(c, n1, "doctor", "--json", "--node", "n1"))
            failed = [ch for ch in found["checks"] if ch["status"] != "pass"]
            if found["ok"] and not failed:
                return found
            # Raised, not returned, so that a timeout names the checks that never passed.
            raise AssertionError([(ch["id"], ch["summary"], ch.get("details")) for ch in failed])

        report = wait_for("doctor to pass on n1", all_pass, timeout=20)
        mtu = next(ch for ch in report["checks"] if ch["id"] == "mtu")
        assert "MTU 1440 ≤ 1440 (eth0 MTU 1500 − 60)" in mtu["summary"]

        status = json.loads(meshcrypt(c, n1, "status", "--json", "--node", "n1"))
        [fam] = status["families"]
        assert {p["node"] for p in fam["peers"]} == {"n2", "n3"}
        assert fam["device"]["public_key"] == c.published_key("n1")

        # A third node's agent stops and its Node loses the key: n1's agent makes it keyless
        # (throw routes, no peer); doctor follows the datastore and still passes once it has.
        nodes[2].stop()
        doc = c.node_doc("n3")
        assert doc is not None
        doc["status"]["wireguardPublicKey"] = ""
        c.put_json("/calico/resources/v3/projectcalico.org/nodes/n3", doc)

        def doctor_ok() -> bool:
            out = meshcrypt(c, n1, "doctor", "--json", "--node", "n1")
            return bool(json.loads(out)["ok"])

        wait_for("n1 to drop n3 as a peer", doctor_ok, timeout=30)
        out = meshcrypt(c, n1, "doctor", "--node", "n1")
        assert "n3: no IPv4 public key published" not in out  # details print only on failure
        assert "1 node reached unencrypted" in out
