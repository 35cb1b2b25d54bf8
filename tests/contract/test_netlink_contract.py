"""The shared Netlink port checks, run against `RtNetlink` in a throwaway network namespace.

The same `checks.py` runs against the fakes in `test_fakes_contract.py`, so fakes and kernel cannot
drift. Only the Netlink checks run here (the WireGuard ones need a WireGuard backend, which the
WireGuard adapters' suites provide); the harness stands in for what the ports cannot do: it makes
plain links (veth pairs: this kernel has no dummy type) and takes links down with `ip`.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshcrypt.adapters.netlink import RtNetlink
from meshcrypt.model.dataplane import Device, DeviceConfig
from meshcrypt.model.net import IPFamily

from .checks import CHECKS, FAMILY_CHECKS, ContractEnv

pytestmark = pytest.mark.integration

TABLE = 199


def _is_netlink_check(check: Callable[..., None]) -> bool:
    return not check.__name__.startswith("check_wireguard")


NETLINK_CHECKS = [c for c in CHECKS if _is_netlink_check(c)]
NETLINK_FAMILY_CHECKS = [c for c in FAMILY_CHECKS if _is_netlink_check(c)]


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


class _NoWireguard:
    """The Netlink checks never touch WireGuard; a check that does is in the wrong list here."""

    def device(self, name: str) -> Device:
        raise AssertionError(f"WireGuard check run against the netlink contract ({name})")

    def configure(self, name: str, config: DeviceConfig) -> None:
        raise AssertionError(f"WireGuard check run against the netlink contract ({name})")

    def close(self) -> None:
        pass


class _Namespace:
    def __init__(self) -> None:
        self.name = f"mc-nl-{secrets.token_hex(4)}"
        _ip("netns", "add", self.name)
        # A fresh namespace's loopback is down; every real node's is up.
        _ip("-n", self.name, "link", "set", "lo", "up")

    def json(self, *args: str) -> Any:
        return json.loads(_ip("-n", self.name, "-j", *args) or "[]")

    def make_link(self, name: str) -> int:
        """A veth (peer `<name>-p`, both administratively down); its ifindex."""
        _ip("-n", self.name, "link", "add", name, "type", "veth", "peer", "name", f"{name}-p")
        index: int = self.json("link", "show", "dev", name)[0]["ifindex"]
        return index

    def set_link_down(self, index: int) -> None:
        [name] = [e["ifname"] for e in self.json("link", "show") if e["ifindex"] == index]
        _ip("-n", self.name, "link", "set", "dev", name, "down")

    def snapshot(self) -> tuple[Any, ...]:
        links = sorted((e["ifindex"], e["ifname"]) for e in self.json("link", "show"))
        rules = [self.json(f, "rule", "show") for f in ("-4", "-6")]
        routes = [
            [
                e
                for e in self.json(f, "route", "show", "table", "all")
                if e.get("table") == str(TABLE)
            ]
            for f in ("-4", "-6")
        ]
        return links, rules, routes

    def delete(self) -> None:
        _ip("netns", "del", self.name)


@pytest.fixture
def namespace() -> Iterator[_Namespace]:
    ns = _Namespace()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def env(namespace: _Namespace) -> Iterator[ContractEnv]:
    with RtNetlink(namespace.name) as netlink:
        yield ContractEnv(
            netlink=netlink,
            wireguard=_NoWireguard(),
            wireguard_device="ct-wg",
            table=TABLE,
            make_link=namespace.make_link,
            set_link_down=namespace.set_link_down,
        )


def test_the_netlink_checks_are_selected() -> None:
    """Guards the name-based split: every WireGuard check is excluded, every other one runs."""
    assert NETLINK_CHECKS and NETLINK_FAMILY_CHECKS
    excluded = [c.__name__ for c in CHECKS if not _is_netlink_check(c)]
    excluded += [c.__name__ for c in FAMILY_CHECKS if not _is_netlink_check(c)]
    assert excluded and all("wireguard" in name for name in excluded)


@pytest.mark.parametrize("check", NETLINK_CHECKS, ids=lambda c: c.__name__)
def test_check(check: Callable[[ContractEnv], None], env: ContractEnv) -> None:
    check(env)


@pytest.mark.parametrize("family", list(IPFamily), ids=lambda f: f.label)
@pytest.mark.parametrize("check", NETLINK_FAMILY_CHECKS, ids=lambda c: c.__name__)
def test_family_check(
    check: Callable[[ContractEnv, IPFamily], None], family: IPFamily, env: ContractEnv
) -> None:
    check(env, family)


def test_all_checks_in_one_namespace_leave_it_as_found(
    namespace: _Namespace, env: ContractEnv
) -> None:
    before = namespace.snapshot()
    for family in IPFamily:
        for family_check in NETLINK_FAMILY_CHECKS:
            family_check(env, family)
    for check in NETLINK_CHECKS:
        check(env)
    assert namespace.snapshot() == before
