"""Pure planning for the WireGuard routing table: desired routes vs. what the kernel holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshcrypt.model.dataplane import Route, RouteKey, RouteKind


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """Operations that take the kernel from observed to desired. Deletes run before replaces."""

    delete: tuple[Route, ...] = ()
    replace: tuple[Route, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.delete and not self.replace


def is_owned(route: Route, table: int, ifindex: int | None) -> bool:
    """Whether a route in the kernel is ours to manage.

    Ours means: in our table and either a throw route (no device) or a route through our WireGuard
    device. Routes in our table through other devices belong to someone else and are left alone.
    """
    if route.table != table:
        return False
    if route.kind is RouteKind.THROW:
        return True
    return ifindex is not None and route.ifindex == ifindex


def plan_full(desired: Mapping[RouteKey, Route], observed_owned: Iterable[Route]) -> RoutePlan:
    """Full reconciliation: delete every owned route we don't want, replace every one that differs."""
    observed = {r.key: r for r in observed_owned}
    delete = tuple(r for k, r in observed.items() if k not in desired)
    replace = tuple(r for k, r in desired.items() if observed.get(k) != r)
    return RoutePlan(delete=delete, replace=replace)


def plan_delta(
    keys: Iterable[RouteKey],
    desired: Mapping[RouteKey, Route | None],
    programmed: Mapping[RouteKey, Route],
) -> RoutePlan:
    """Reconcile only the given keys against what we last programmed (a key without a desired
    route, absent from `desired` or None there, is deleted if it was programmed)."""
    delete: list[Route] = []
    replace: list[Route] = []
    for key in keys:
        want, have = desired.get(key), programmed.get(key)
        if want == have:
            continue
        if want is None:
            assert have is not None
            delete.append(have)
        else:
            replace.append(want)
    return RoutePlan(delete=tuple(delete), replace=tuple(replace))
