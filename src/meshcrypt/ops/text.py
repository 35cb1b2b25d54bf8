"""Plain-text building blocks for the operator commands' human output (aligned, no colour)."""

from __future__ import annotations

from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Rows under headers, each column as wide as its widest cell; no trailing spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def fields(pairs: Sequence[tuple[str, str]], indent: str = "") -> list[str]:
    """`name   value` lines with the values aligned."""
    width = max((len(name) for name, _ in pairs), default=0)
    return [f"{indent}{name.ljust(width)}  {value}".rstrip() for name, value in pairs]


def duration(seconds: float) -> str:
    """`45s`, `3m 5s`, `2h 10m`, `3d 4h` (whole seconds, two units at most)."""
    total = max(int(seconds), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{n}{unit}" for n, unit in parts[:2])


def byte_size(count: int) -> str:
    """`512 B`, `1.50 KiB`, `3.20 MiB`."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.2f} {unit}"
    return f"{value:.2f} PiB"
