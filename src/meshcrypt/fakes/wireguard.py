"""`FakeWireguard`: a `ports.WireguardDevices` client of one `FakeKernel`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshcrypt.fakes.faults import Op
from meshcrypt.fakes.invariants import InvariantViolation
from meshcrypt.model.dataplane import Device, DeviceConfig

if TYPE_CHECKING:
    from meshcrypt.fakes.kernel import FakeKernel


class FakeWireguard:
    """Each call fails if the client is closed (a caller bug), then raises an armed fault (changing
    nothing), then does what the kernel or wireguard-go would (see `meshcrypt.fakes.wgdevice`)."""

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
            raise InvariantViolation(f"{op.value} on a closed WireGuard client")
        self._kernel.faults.check(op)
        return self._kernel

    def device(self, name: str) -> Device:
        return self._enter(Op.WG_DEVICE).wg_device(name)

    def configure(self, name: str, config: DeviceConfig) -> None:
        self._enter(Op.WG_CONFIGURE).wg_configure(name, config)
