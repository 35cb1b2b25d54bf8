"""The wireguard-go supervisor, and simulated nodes side by side."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import meshcrypt
from meshcrypt.adapters.nodens import NodeCommandError, SimNode
from meshcrypt.adapters.wireguard_go import WireguardGoSupervisor, pid_alive, start_time
from meshcrypt.adapters.wireguard_uapi import UapiWireguardDevices
from meshcrypt.model.dataplane import DeviceConfig
from meshcrypt.model.errors import KernelError, NotFound, NotSupported
from meshcrypt.model.keys import PrivateKey

integration = pytest.mark.integration
IFACE = "wireguard.cali"


def _supervisor(sim, state: Path, **kwargs) -> WireguardGoSupervisor:
    return WireguardGoSupervisor(
        str(state), socket_dir=sim.socket_dir, prefix_cmd=sim.nsenter_prefix, **kwargs
    )


def _link(sim: SimNode, iface: str = IFACE) -> str:
    return sim.run("ip", "-o", "link", "show", "dev", iface)


def _wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ---- no root needed --------------------------------------------------------------------------


def test_a_missing_binary_is_not_supported(tmp_path: Path) -> None:
    sup = WireguardGoSupervisor(
        str(tmp_path / "state"), socket_dir=str(tmp_path), binary="/nonexistent/wireguard-go"
    )
    with pytest.raises(NotSupported):
        sup.ensure_running("wg0", mtu=0)
    assert not sup.pid_file("wg0").exists()


def test_stop_falls_back_to_sigkill_for_the_recorded_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A recorded process whose socket does not answer and that ignores SIGTERM (a hung wireguard-go).
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 60"], start_new_session=True)
    try:
        time.sleep(0.2)  # let the trap be installed before the exec
        sup = WireguardGoSupervisor(str(tmp_path), socket_dir=str(tmp_path), stop_timeout=0.3)
        sup.pid_file("wg0").write_text(f"{stubborn.pid} {start_time(stubborn.pid)}\n")
        assert not sup.is_alive("wg0")  # nothing answers on the socket
        sup.stop("wg0")
        assert not pid_alive(stubborn.pid)
        assert "survived SIGTERM" in caplog.text
        assert not sup.pid_file("wg0").exists()
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
            stubborn.wait()


def test_a_reused_pid_in_the_pid_file_is_never_signalled(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        sup = WireguardGoSupervisor(str(tmp_path), socket_dir=str(tmp_path))
        # Same PID, different start time: the recorded process is gone and the PID was reused.
        started = start_time(bystander.pid)
        assert started is not None
        sup.pid_file("wg0").write_text(f"{bystander.pid} {started - 1}\n")
        assert sup.adopt("wg0") is None
        sup.stop("wg0")
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


# ---- wireguard-go in simulated nodes -----------------------------------------------------------


@integration
def test_start_then_ensure_running_again_is_the_same_process(node, tmp_path: Path) -> None:
    sim = node("a")
    sup = _supervisor(sim, tmp_path / "state")
    pid = sup.ensure_running(IFACE, mtu=1400)
    try:
        assert pid_alive(pid)
        assert os.getsid(pid) == pid  # its own session: signals to the agent's group miss it
        assert sup.pid_file(IFACE).read_text().split()[0] == str(pid)
        assert sup.log_file(IFACE).exists()
        assert Path(sim.socket_dir, f"{IFACE}.sock").exists()
        assert " mtu 1400 " in _link(sim)
        assert Path(f"/proc/{pid}/environ").read_bytes().count(b"LOG_LEVEL=error\0") == 1
        assert sup.is_alive(IFACE)
        assert sup.ensure_running(IFACE, mtu=1400) == pid
    finally:
        sup.stop(IFACE)
    assert _wait_dead(pid)


@integration
def test_a_new_supervisor_adopts_then_stop_removes_process_tun_and_socket(
    node, tmp_path: Path
) -> None:
    sim = node("a")
    state = tmp_path / "state"
    pid = _supervisor(sim, state).ensure_running(IFACE, mtu=0)
    fresh = _supervisor(sim, state)
    assert fresh.adopt(IFACE) == pid
    assert fresh.ensure_running(IFACE, mtu=0) == pid

    fresh.stop(IFACE)
    assert _wait_dead(pid)
    with pytest.raises(NodeCommandError):
        _link(sim)  # the TUN went away with the process
    assert not Path(sim.socket_dir, f"{IFACE}.sock").exists()
    assert not fresh.pid_file(IFACE).exists()
    assert fresh.adopt(IFACE) is None
    assert not fresh.is_alive(IFACE)
    with pytest.raises(NotFound):
        UapiWireguardDevices(sim.socket_dir).device(IFACE)
    fresh.stop(IFACE)  # stopping what is not running is fine


@integration
def test_wireguard_go_outlives_the_process_that_started_it(node, tmp_path: Path) -> None:
    sim = node("a")
    state = tmp_path / "state"
    starter = textwrap.dedent(
        """
        import sys
        from meshcrypt.adapters.wireguard_go import WireguardGoSupervisor
        sup = WireguardGoSupervisor(sys.argv[1], socket_dir=sys.argv[2], prefix_cmd=sys.argv[3:])
        print(sup.ensure_running("wireguard.cali", 0))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(meshcrypt.__file__).parents[1])}
    # capture_output also proves wireguard-go does not hold our stdout: run() would wait for EOF.
    res = subprocess.run(
        [sys.executable, "-c", starter, str(state), sim.socket_dir, *sim.nsenter_prefix],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    pid = int(res.stdout.strip())
    sup = _supervisor(sim, state)
    try:
        assert pid_alive(pid)
        assert sup.adopt(IFACE) == pid
        key = PrivateKey.generate()
        with UapiWireguardDevices(sim.socket_dir) as wg:
            wg.configure(IFACE, DeviceConfig(private_key=key))
            assert wg.device(IFACE).public_key == key.public_key()
    finally:
        sup.stop(IFACE)
    assert _wait_dead(pid)


@integration
def test_a_restarted_agent_keeps_the_device_and_its_key(node, tmp_path: Path) -> None:
    sim = node("a")
    state = tmp_path / "state"
    first = _supervisor(sim, state)
    pid = first.ensure_running(IFACE, mtu=0)
    key = PrivateKey.generate()
    with UapiWireguardDevices(sim.socket_dir) as wg:
        wg.configure(IFACE, DeviceConfig(private_key=key, listen_port=51820))
    del first
    second = _supervisor(sim, state)
    try:
        assert second.ensure_running(IFACE, mtu=0) == pid
        with UapiWireguardDevices(sim.socket_dir) as wg:
            assert wg.device(IFACE).private_key == key
    finally:
        second.stop(IFACE)


@integration
def test_a_process_that_exits_at_start_is_an_error_with_its_log(node, tmp_path: Path) -> None:
    sim = node("a")
    sup = _supervisor(sim, tmp_path / "state")
    with pytest.raises(KernelError) as info:
        sup.ensure_running("x" * 20, mtu=0)  # longer than IFNAMSIZ: no TUN
    assert "name too long" in str(info.value)
    assert not sup.pid_file("x" * 20).exists()
    assert sim.pids() == [sim.holder_pid]


@integration
def test_a_stale_pid_file_does_not_stop_a_start(node, tmp_path: Path) -> None:
    sim = node("a")
    sup = _supervisor(sim, tmp_path / "state")
    sup.state_dir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    sup.pid_file(IFACE).write_text(f"{dead.pid} 1\n")
    pid = sup.ensure_running(IFACE, mtu=0)
    try:
        assert pid != dead.pid
        assert sup.pid_file(IFACE).read_text().split() == [str(pid), str(start_time(pid))]
    finally:
        sup.stop(IFACE)


@integration
def test_two_nodes_both_run_wireguard_cali_without_colliding(node, wireguard_go) -> None:
    a, b = wireguard_go(node("a")), wireguard_go(node("b"))
    assert a.pid != b.pid
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    a.devices.configure(IFACE, DeviceConfig(private_key=ka, listen_port=51820))
    b.devices.configure(IFACE, DeviceConfig(private_key=kb, listen_port=51820))
    assert a.devices.device(IFACE).public_key == ka.public_key()
    assert b.devices.device(IFACE).public_key == kb.public_key()
    assert a.node.run("wg", "show", IFACE, "public-key").strip() == ka.public_key().to_base64()
    assert b.node.run("wg", "show", IFACE, "public-key").strip() == kb.public_key().to_base64()
    assert IFACE in _link(a.node)
    assert IFACE in _link(b.node)
    assert not Path("/run/wireguard", f"{IFACE}.sock").exists()  # nothing leaked to the host


@integration
def test_a_node_has_its_own_run_wireguard_and_destroy_leaves_nothing(tmp_path: Path) -> None:
    sim = SimNode.create("solo", netns=f"mct{os.getpid()}-solo")
    try:
        assert ",UP," in sim.run("ip", "-o", "link", "show", "lo")
        sim.run("touch", "/run/wireguard/marker")
        assert Path(sim.socket_dir, "marker").exists()
        assert not Path("/run/wireguard/marker").exists()
        straggler = sim.popen("sleep", "60")  # left running on purpose: destroy must kill it
        assert set(sim.pids()) == {sim.holder_pid, straggler.pid}
    finally:
        sim.destroy()
    assert straggler.wait(timeout=5) is not None
    assert not pid_alive(sim.holder_pid)
    assert (
        sim.netns
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
    )
    sim.destroy()  # idempotent
