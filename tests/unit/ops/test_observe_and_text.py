"""Reading the dataplane through the ports (errors recorded, never raised); the host MTU; text."""

from __future__ import annotations

from meshcrypt.fakes import FakeKernel, Op
from meshcrypt.model.dataplane import Link
from meshcrypt.model.net import IPFamily
from meshcrypt.ops import text
from meshcrypt.ops.observe import host_mtu, observe_family
from tests.unit.ops.scenario import Scenario

PATTERN = r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)"


def test_read_errors_are_recorded_not_raised() -> None:
    s = Scenario(IPFamily.V4)
    s.kernel.faults.fail_next(Op.WG_DEVICE)
    obs = observe_family(
        s.kernel.new_netlink_client(),
        lambda _link: s.kernel.new_wireguard_client(),
        IPFamily.V4,
        "wireguard.cali",
        1,
    )
    assert obs.link is not None and obs.device is None
    assert len(obs.errors) == 1 and "reading WireGuard device wireguard.cali" in obs.errors[0]
    assert len(obs.routes) == 5  # the rest was still read


def test_no_device_no_error() -> None:
    kernel = FakeKernel()
    obs = observe_family(
        kernel.new_netlink_client(),
        lambda _link: kernel.new_wireguard_client(),
        IPFamily.V6,
        "wg-v6.cali",
        1,
    )
    assert obs.link is None and obs.device is None and obs.errors == ()
    assert obs.backend is None


def link(name: str, mtu: int, up: bool = True) -> Link:
    return Link(name, 1, "veth", mtu, admin_up=up, oper_up=up)


def test_host_mtu_is_the_smallest_running_matching_link() -> None:
    links = [
        link("eth0", 9000),
        link("ens3", 1500),
        link("enp1s0", 1500),
        link("eth9", 1200, up=False),
        link("docker0", 1000),
        link("lo", 65536),
        link("wireguard.cali", 1400),
    ]
    found = host_mtu(links, PATTERN, exclude=("wireguard.cali",))
    assert found.mtu == 1500 and found.links == ("enp1s0", "ens3")
    assert host_mtu([link("docker0", 1500)], PATTERN).mtu is None
    assert host_mtu([link("wg0", 1400)], r"^wg", exclude=("wg0",)).mtu is None


def test_text_helpers() -> None:
    assert text.duration(0) == "0s"
    assert text.duration(65) == "1m 5s"
    assert text.duration(3 * 86400 + 4 * 3600 + 5) == "3d 4h"
    assert text.duration(-3) == "0s"
    assert text.byte_size(512) == "512 B"
    assert text.byte_size(1536) == "1.50 KiB"
    assert text.byte_size(5 * 1024**3) == "5.00 GiB"
    assert text.table(["A", "BB"], [["xyz", "1"], ["q", ""]], "  ") == [
        "  A    BB",
        "  xyz  1",
        "  q",
    ]
    assert text.fields([("a", "1"), ("long", "2")]) == ["a     1", "long  2"]
