"""A manual clock implementing `ports.Clock`."""

from __future__ import annotations


class FakeClock:
    """Monotonic and wall time that move only when told to.

    `auto_advance` moves both clocks forward by that many seconds after every read, like the reference
    tests' mock time (11 s per call) that makes every grace period expire at once.
    """

    def __init__(
        self,
        *,
        monotonic_start: float = 1000.0,
        wall_start: float = 1_700_000_000.0,
        auto_advance: float = 0.0,
    ) -> None:
        if auto_advance < 0:
            raise ValueError("auto_advance must not be negative")
        self._monotonic = monotonic_start
        self._wall = wall_start
        self.auto_advance = auto_advance
        self.reads = 0

    def monotonic(self) -> float:
        now = self._monotonic
        self._after_read()
        return now

    def wall(self) -> float:
        now = self._wall
        self._after_read()
        return now

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._monotonic += seconds
        self._wall += seconds

    def _after_read(self) -> None:
        self.reads += 1
        if self.auto_advance:
            self.advance(self.auto_advance)
