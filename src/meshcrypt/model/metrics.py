"""Prometheus metric values and the text exposition format, without a client library.

Calico's WireGuard metrics keep their exact names (counters without a `_total` suffix), which is why
meshcrypt renders the format itself. `Histogram` covers the agent's own latency metrics.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    labels: Labels
    value: float
    suffix: str = ""  # "_bucket", "_sum", "_count" for histograms


@dataclass(frozen=True, slots=True)
class MetricFamily:
    name: str
    kind: str  # "gauge", "counter" or "histogram"
    help: str
    samples: tuple[Sample, ...]


class Histogram:
    """A thread-safe cumulative histogram (seconds), rendered as Prometheus `histogram`."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.help = help_text
        self._bounds = sorted(buckets)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self._bounds, value)] += 1
            self._sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def family(self) -> MetricFamily:
        with self._lock:
            counts, total = list(self._counts), self._sum
        samples: list[Sample] = []
        running = 0
        for bound, n in zip([*self._bounds, float("inf")], counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            samples.append(Sample((("le", le),), float(running), "_bucket"))
        samples.append(Sample((), total, "_sum"))
        samples.append(Sample((), float(running), "_count"))
        return MetricFamily(self.name, "histogram", self.help, tuple(samples))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def render(families: Iterable[MetricFamily]) -> str:
    """Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels)
            suffix = f"{{{labels}}}" if labels else ""
            lines.append(f"{family.name}{sample.suffix}{suffix} {_number(sample.value)}")
    return "\n".join(lines) + "\n"
