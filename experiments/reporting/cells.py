"""Table cells: numbers, durations, token counts and free text formatted for Markdown."""

from __future__ import annotations

import math


def text(value, limit: int = 300) -> str:
    """Free text in one table cell: newlines joined, pipes escaped, long text cut with an ellipsis."""
    s = " ".join(str(value).split())
    s = s if len(s) <= limit else s[:limit - 1] + "…"
    return s.replace("|", "\\|")


def loss(mean: float, half: float, n: int, total: int) -> str:
    """``2.1053 ± 0.0121``, with ``(n of total)`` when some runs had no finite value."""
    if n == 0:
        return "—"
    out = f"{mean:.4f} ± {half:.4f}"
    return out if n == total else f"{out} ({n} of {total})"


def single(value: float | None, digits: int = 4) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def count(value: float | None) -> str:
    """1638400 -> ``1.64M``."""
    if value is None or not math.isfinite(value):
        return "—"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def span(values: list[float | None], show) -> str:
    """One value, or ``lo–hi`` when the runs differ."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "—"
    lo, hi = show(min(v)), show(max(v))
    if lo == hi:
        return lo
    lo_num, _, lo_unit = lo.partition(" ")
    hi_num, _, hi_unit = hi.partition(" ")
    return f"{lo_num}–{hi_num} {lo_unit}" if lo_unit and lo_unit == hi_unit else f"{lo}–{hi}"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
