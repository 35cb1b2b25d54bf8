"""Threaded NAPI on the kernel backend, driven through the agent's dataplane (runs inside the VM).

`wireguardThreadingEnabled` toggles `/sys/class/net/wireguard.cali/threaded` (Felix FV #92: 0→1→0);
each change rebuilds the family's manager, as a FelixConfiguration change does in the agent. The
kernel has NAPI contexts only per peer and refuses the setting (EOPNOTSUPP) while the device has
none, so nothing is written — and no "not supported" is reported — before the first peer.
"""

from __future__ import annotations

import ipaddress
import logging
import os

import pytest

from meshcrypt.adapters.backend import BackendMode, select_backend
from meshcrypt.adapters.nodens import SimNode
from meshcrypt.adapters.sysfs import FileSysfs
from meshcrypt.agent.dataplane import Dataplane
from meshcrypt.calc.calculator import Calculator
from meshcrypt.model.config import FelixConfig
from meshcrypt.model.errors import NotSupported, WaitingForLink
from meshcrypt.model.keys import PrivateKey
from meshcrypt.model.resources import IPAMBlockResource, NodeResource

from .vmnodes import WG_IFACE

pytestmark = pytest.mark.vm

ME = "me"


def test_threading_follows_the_configuration(
    vm_kernel: None, caplog: pytest.LogCaptureFixture
) -> None:
    sim = SimNode.create("napi", netns=f"mck{os.getpid()}-napi")
    try:
        backend = select_backend(BackendMode.KERNEL, interfaces=[WG_IFACE], netns=sim.netns)
        assert backend.name == "kernel"
        dataplane = Dataplane(ME, backend, FileSysfs(sim.netns), lambda _family, _key: None)
        calc = Calculator(ME)
        calc.on_node(ME, NodeResource(ME, ipv4_address=ipaddress.IPv4Interface("192.0.2.1/24")))
        calc.on_block("me", IPAMBlockResource(ipaddress.ip_network("10.65.0.0/26"), ME))

        def threaded() -> str:
            return sim.run("cat", f"/sys/class/net/{WG_IFACE}/threaded").strip()

        def apply() -> None:
            for _ in range(20):
                try:
                    dataplane.apply()
                    return
                except WaitingForLink:
                    continue
            raise AssertionError("the WireGuard link never came up")

        def configure(threading: bool) -> None:
            first = not dataplane.managers
            rebuilt = dataplane.configure(
                FelixConfig(wireguard_enabled=True, wireguard_threading_enabled=threading)
            )
            if first:
                dataplane.dispatch(calc.flush())
            else:
                dataplane.dispatch_to(rebuilt, calc.snapshot())
            apply()

        with caplog.at_level(logging.INFO, logger="meshcrypt"):
            configure(True)
            assert threaded() == "0"  # no peer yet: nothing is tried, since the kernel refuses
            with pytest.raises(NotSupported):
                FileSysfs(sim.netns).write(f"/sys/class/net/{WG_IFACE}/threaded", "1")

            calc.on_node(
                "peer",
                NodeResource(
                    "peer",
                    ipv4_address=ipaddress.IPv4Interface("192.0.2.2/24"),
                    public_key=PrivateKey.generate().public_key(),
                ),
            )
            calc.on_block("peer", IPAMBlockResource(ipaddress.ip_network("10.65.1.0/26"), "peer"))
            dataplane.dispatch(calc.flush())
            apply()
            assert threaded() == "1"

            for threading, expected in ((False, "0"), (True, "1"), (False, "0")):
                configure(threading)
                assert threaded() == expected

        napi = [r.getMessage() for r in caplog.records if "NAPI" in r.getMessage()]
        assert not [m for m in napi if "not supported" in m or "failed" in m], napi
        assert any("NAPI threading set to True" in m for m in napi), napi
    finally:
        sim.destroy()
