"""The shared port checks, run against the fakes (the real adapters run them in a namespace)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshcrypt.fakes import FakeKernel
from meshcrypt.model.net import IPFamily

from .checks import CHECKS, FAMILY_CHECKS, ContractEnv


def _env() -> tuple[FakeKernel, ContractEnv]:
    # Linux brings a link up at once, so the contract runs with immediate_link_up.
    kernel = FakeKernel(immediate_link_up=True)
    kernel.add_link("ct-wg", kind="wireguard", up=True)

    def make_link(name: str) -> int:
        return kernel.add_link(name, kind="veth").index

    def set_link_down(index: int) -> None:
        [link] = [link for link in kernel.links() if link.index == index]
        kernel.set_link_up(link.name, up=False)

    env = ContractEnv(
        netlink=kernel.new_netlink_client(),
        wireguard=kernel.new_wireguard_client(),
        wireguard_device="ct-wg",
        table=199,
        make_link=make_link,
        set_link_down=set_link_down,
    )
    return kernel, env


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_check(check: Callable[[ContractEnv], None]) -> None:
    _, env = _env()
    check(env)


@pytest.mark.parametrize("family", list(IPFamily), ids=lambda f: f.label)
@pytest.mark.parametrize("check", FAMILY_CHECKS, ids=lambda c: c.__name__)
def test_family_check(check: Callable[[ContractEnv, IPFamily], None], family: IPFamily) -> None:
    _, env = _env()
    check(env, family)


def test_all_checks_in_one_namespace_leave_it_as_found() -> None:
    """The checks clean up after themselves, so a real namespace can run them back to back."""
    kernel, env = _env()
    links, rules = kernel.links(), {f: kernel.rules_of(f) for f in IPFamily}
    for family in IPFamily:
        for family_check in FAMILY_CHECKS:
            family_check(env, family)
    for check in CHECKS:
        check(env)
    assert kernel.links() == links
    assert {f: kernel.rules_of(f) for f in IPFamily} == rules
    assert kernel.all_routes() == []
    assert kernel.device("ct-wg").peers == {}
