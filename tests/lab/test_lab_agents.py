"""End to end: a lab with real agents (`meshcrypt agent`, wireguard-go) encrypts all pod traffic,
survives an agent restart, and `lab down` removes wireguard-go too (it outlives its agent)."""

from __future__ import annotations

import re

import pytest

from meshcrypt.adapters.lab_proc import ProcessId, cmdline, namespace_id, pids_in_netns
from tests.lab.conftest import LabFactory, LabUnderTest, assert_no_leftovers, counted

pytestmark = pytest.mark.integration


def wireguard_go(lab: LabUnderTest) -> set[ProcessId]:
    """The wireguard-go processes in the lab's nodes."""
    ids = {namespace_id(f"/run/netns/{n.netns}") for n in lab.state().nodes}
    pids = pids_in_netns({i for i in ids if i is not None})
    found = {ProcessId.of(pid) for pid in pids if cmdline(pid)[:1] == ["wireguard-go"]}
    return {p for p in found if p is not None}


def diagnose(lab: LabUnderTest) -> str:
    """What the nodes' devices and agents say, for a failure message."""
    out = [lab.cli("status").stdout]
    for node in lab.state().nodes:
        out.append(lab.cli("exec", node.name, "--", "wg", "show").stdout)
        log = (lab.dir / f"agent-{node.name}.log").read_text().splitlines()
        out += [f"--- agent-{node.name}.log", *log[-25:]]
    return "\n".join(out)


@pytest.mark.parametrize(
    ("flags", "devices"),
    [
        ([], "wireguard.cali"),
        (["--ipv6"], "wg-v6.cali"),
        (["--dual-stack"], "wireguard.cali, wg-v6.cali"),
    ],
    ids=["ipv4", "ipv6", "dual-stack"],
)
def test_agents_encrypt_pod_traffic_and_survive_a_restart(
    make_lab: LabFactory, flags: list[str], devices: str
):
    lab = make_lab()
    res = lab.up("--nodes", "2", "--pods-per-node", "1", "--timeout", "60", *flags)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "converged in" in res.stdout
    started = wireguard_go(lab)
    # One per node and family, outside the agents' sessions.
    assert len(started) == 2 * len(devices.split(", "))

    res = lab.cli("status")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"converged: every node's {devices} has a peer" in res.stdout
    assert re.search(r"^node1 .* ready +published", res.stdout, re.MULTILINE)

    # The project's own troubleshooting checks agree, run inside a node.
    res = lab.cli("exec", "node1", "--", "meshcrypt", "doctor")
    assert res.returncode == 0, res.stdout + res.stderr

    # First traffic in one direction only: `lab ping` right away makes both ends start the first
    # handshake at once, which wireguard-go does not always survive (one direction lost for
    # longer than ping's 20 s deadline, seen under load; see the lab's report). That is a finding
    # about the dataplane, not what this test is about.
    state = lab.state()
    pod1, pod2 = state.pods
    for address in pod2.addresses:
        res = lab.cli("exec", pod1.name, "--", "ping", "-n", "-c", "1", "-w", "20", address)
        assert res.returncode == 0, res.stdout + res.stderr + diagnose(lab)

    res = lab.cli("ping", "--count", "2")
    assert res.returncode == 0, res.stdout + diagnose(lab)
    res = lab.cli("capture", "node1", "--seconds", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert counted(res.stdout, "plaintext pod traffic") == 0
    assert counted(res.stdout, "WireGuard (UDP)") > 0

    old = lab.state().node("node2").agent
    res = lab.cli("restart-agent", "node2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "node2: converged in" in res.stdout
    assert old is not None and not old.running()
    assert wireguard_go(lab) == started  # adopted, not restarted
    res = lab.cli("ping", "--count", "2")
    assert res.returncode == 0, res.stdout + diagnose(lab)

    lab.remember()
    res = lab.down()
    assert res.returncode == 0, res.stdout + res.stderr
    assert not any(p.running() for p in started)
    assert_no_leftovers(lab)
