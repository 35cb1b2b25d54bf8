"""The WireGuard routing table of one IP family.

Holds the desired route for every CIDR we know (a device route through the WireGuard interface, or a
throw route back to the main table) and reconciles it with the kernel: by delta (only CIDRs that changed
since the last apply) or by full resync (dump the table and correct everything that is ours).

Device routes are only programmed while the WireGuard interface is up: the kernel refuses them
otherwise, and it deletes them itself when the interface goes down.
"""

from __future__ import annotations

import logging

from meshcrypt.model.dataplane import Route, RouteKey, RouteKind
from meshcrypt.model.errors import KernelError, UpdateFailed
from meshcrypt.model.net import CIDR, IPFamily
from meshcrypt.ports import CachedClient, Netlink
from meshcrypt.routing.route_plan import RoutePlan, is_owned, plan_delta, plan_full

log = logging.getLogger(__name__)


class RouteTable:
    """Desired device/throw routes of one family in one table, reconciled through a Netlink port."""

    def __init__(
        self,
        family: IPFamily,
        table: int,
        iface: str,
        protocol: int,
        netlink: CachedClient[Netlink],
        *,
        enabled: bool = True,
    ) -> None:
        self.family = family
        self.table = table
        self.iface = iface
        self.protocol = protocol
        self._netlink = netlink
        self._enabled = enabled
        self._metric = family.default_route_metric
        self._kinds: dict[CIDR, RouteKind] = {}
        self._programmed: dict[RouteKey, Route] = {}
        self._dirty: set[CIDR] = set()
        self._full_resync = True
        self._ifindex: int | None = None
        self._iface_up = False

    # -- intent -------------------------------------------------------------------------------

    def set_route(self, dst: CIDR, kind: RouteKind) -> None:
        if self._kinds.get(dst) is not kind:
            self._kinds[dst] = kind
            self._dirty.add(dst)

    def remove_route(self, dst: CIDR) -> None:
        if self._kinds.pop(dst, None) is not None:
            self._dirty.add(dst)

    def clear(self) -> None:
        """Want nothing in the table (used when WireGuard is disabled)."""
        self._dirty.update(self._kinds)
        self._kinds.clear()

    def on_iface_state(self, name: str, ifindex: int, up: bool) -> None:
        """Link state of our WireGuard interface (other names are ignored)."""
        if name != self.iface:
            return
        if ifindex != self._ifindex or up != self._iface_up:
            self._ifindex, self._iface_up = ifindex, up
            # The kernel dropped (or we may now program) every device route.
            self._programmed = {
                k: r for k, r in self._programmed.items() if r.kind is not RouteKind.DEVICE
            }
            self._dirty.update(d for d, k in self._kinds.items() if k is RouteKind.DEVICE)

    def queue_resync(self) -> None:
        self._full_resync = True

    # -- read-back for callers and tests ------------------------------------------------------

    def kind_of(self, dst: CIDR) -> RouteKind | None:
        return self._kinds.get(dst)

    @property
    def in_sync(self) -> bool:
        return not self._full_resync and not self._dirty

    # -- apply --------------------------------------------------------------------------------

    def desired_routes(self) -> dict[RouteKey, Route]:
        routes: dict[RouteKey, Route] = {}
        for dst in self._kinds:
            route = self._desired_route(dst)
            if route is not None:
                routes[route.key] = route
        return routes

    def _desired_route(self, dst: CIDR) -> Route | None:
        kind = self._kinds.get(dst)
        if kind is None:
            return None
        if kind is RouteKind.DEVICE:
            if not self._iface_up or self._ifindex is None:
                return None
            return Route(self.table, dst, kind, self._ifindex, self.protocol, self._metric)
        return Route(self.table, dst, kind, None, self.protocol, self._metric)

    def apply(self) -> RoutePlan:
        """Program the kernel. Raises UpdateFailed (and schedules a full resync) on any error.

        A delta plans and records only the CIDRs that changed since the last apply, so its cost
        does not grow with the table; a full resync builds every desired route once.
        """
        if not self._enabled:
            self._dirty.clear()
            self._full_resync = False
            return RoutePlan()
        try:
            if self._full_resync:
                desired = self.desired_routes()
                observed = self._netlink.get().routes(self.table, self.family)
                owned = [r for r in observed if is_owned(r, self.table, self._ifindex)]
                plan = plan_full(desired, owned)
                self._execute(plan)
                self._programmed = desired
            else:
                wanted = {
                    RouteKey(self.table, dst, self._metric): self._desired_route(dst)
                    for dst in self._dirty
                }
                plan = plan_delta(wanted, wanted, self._programmed)
                self._execute(plan)
                for key, route in wanted.items():
                    if route is None:
                        self._programmed.pop(key, None)
                    else:
                        self._programmed[key] = route
        except KernelError as exc:
            self._full_resync = True
            self._netlink.reset()
            raise UpdateFailed(f"{self.family.label} route table {self.table}: {exc}") from exc
        self._dirty.clear()
        self._full_resync = False
        return plan

    def _execute(self, plan: RoutePlan) -> None:
        netlink = self._netlink.get()
        if plan.delete:
            log.info(
                "Removing %d route(s) from %s table %d",
                len(plan.delete),
                self.family.label,
                self.table,
            )
            netlink.routes_delete(plan.delete)
        if plan.replace:
            log.info(
                "Programming %d route(s) in %s table %d",
                len(plan.replace),
                self.family.label,
                self.table,
            )
            netlink.routes_replace(plan.replace)
