"""`FakeNetlink`: a `ports.Netlink` client of one `FakeKernel`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from meshcrypt.fakes.faults import Op
from meshcrypt.fakes.invariants import InvariantViolation
from meshcrypt.model.dataplane import InterfaceAddress, Link, Route, Rule
from meshcrypt.model.net import IPFamily

if TYPE_CHECKING:
    from meshcrypt.fakes.kernel import FakeKernel


class FakeNetlink:
    """Each call fails if the client is closed (a caller bug), then raises an armed fault (changing
    nothing), then does what the kernel would."""

    def __init__(self, kernel: FakeKernel) -> None:
        self._kernel = kernel
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True

    def _enter(self, op: Op) -> FakeKernel:
        if self._closed:
            raise InvariantViolation(f"{op.value} on a closed netlink client")
        self._kernel.faults.check(op)
        return self._kernel

    def link_by_name(self, name: str) -> Link | None:
        return self._enter(Op.LINK_BY_NAME).nl_link_by_name(name)

    def link_add_wireguard(self, name: str, mtu: int) -> None:
        self._enter(Op.LINK_ADD).nl_link_add_wireguard(name, mtu)

    def link_set_mtu(self, index: int, mtu: int) -> None:
        self._enter(Op.LINK_SET_MTU).nl_link_set_mtu(index, mtu)

    def link_set_up(self, index: int) -> None:
        self._enter(Op.LINK_SET_UP).nl_link_set_up(index)

    def link_delete(self, index: int) -> None:
        self._enter(Op.LINK_DELETE).nl_link_delete(index)

    def addresses(self, index: int, family: IPFamily) -> list[InterfaceAddress]:
        return self._enter(Op.ADDRESS_LIST).nl_addresses(index, family)

    def address_add(self, index: int, address: InterfaceAddress) -> None:
        self._enter(Op.ADDRESS_ADD).nl_address_add(index, address)

    def address_delete(self, index: int, address: InterfaceAddress) -> None:
        self._enter(Op.ADDRESS_DELETE).nl_address_delete(index, address)

    def routes(self, table: int, family: IPFamily) -> list[Route]:
        return self._enter(Op.ROUTE_LIST).nl_routes(table, family)

    def routes_replace(self, routes: Sequence[Route]) -> None:
        self._enter(Op.ROUTE_REPLACE).nl_routes_replace(routes)

    def routes_delete(self, routes: Sequence[Route]) -> None:
        self._enter(Op.ROUTE_DELETE).nl_routes_delete(routes)

    def rules(self, family: IPFamily) -> list[Rule]:
        return self._enter(Op.RULE_LIST).nl_rules(family)

    def rule_add(self, rule: Rule) -> None:
        self._enter(Op.RULE_ADD).nl_rule_add(rule)

    def rule_delete(self, rule: Rule) -> None:
        self._enter(Op.RULE_DELETE).nl_rule_delete(rule)
