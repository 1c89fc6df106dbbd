"""How the command prints: aligned columns and fields, times and durations."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any


def table(rows: Iterable[Iterable[Any]], header: Iterable[str] | None = None) -> list[str]:
    """Columns padded to their widest cell, two spaces apart; the last column is not padded."""
    cells = [[str(c) for c in row] for row in ([header] if header else []) + list(rows)]
    if not cells:
        return []
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
    return ["  ".join([c.ljust(w) for c, w in zip(row, widths)] + row[-1:]).rstrip() for row in cells]


def fields(pairs: Iterable[tuple[str, Any]]) -> list[str]:
    """``key:  value`` lines, the values aligned."""
    pairs = [(f"{k}:", "-" if v is None else str(v)) for k, v in pairs]
    width = max((len(k) for k, _ in pairs), default=0)
    return [f"{k.ljust(width)}  {v}".rstrip() for k, v in pairs]


def utc(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"
