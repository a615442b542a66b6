"""Paired (same-seed) differences of settings against a baseline, beside the unpaired means.

Runs of one seed share initialization and data order, so the per-seed difference is the
primary statistic of a comparison; the means over each setting's own seeds come beside it.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Paired:
    """``setting`` − ``baseline`` per seed both have, and each one's mean over its own seeds."""

    setting: str
    baseline: str
    by_seed: dict  # seed -> setting's value minus baseline's, seeds in sorted order
    setting_mean: float  # unpaired: over the setting's seeds (nan: none)
    baseline_mean: float

    @property
    def mean(self) -> float:
        return sum(self.by_seed.values()) / len(self.by_seed) if self.by_seed else math.nan

    @property
    def range(self) -> tuple[float, float]:
        return (min(self.by_seed.values()), max(self.by_seed.values())) if self.by_seed else (math.nan, math.nan)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def paired(values: dict[tuple[str, object], float], setting: str, baseline: str) -> Paired:
    """``values`` keyed by (setting, seed): the per-seed differences of ``setting`` against
    ``baseline`` over the seeds both have, and the unpaired means over each one's seeds."""
    of = lambda name: {seed: v for (s, seed), v in values.items() if s == name}  # noqa: E731
    x, base = of(setting), of(baseline)
    diffs = {seed: x[seed] - base[seed] for seed in sorted(set(x) & set(base))}
    return Paired(setting, baseline, diffs, _mean(list(x.values())), _mean(list(base.values())))


def against(values: dict[tuple[str, object], float], baseline: str) -> list[Paired]:
    """``paired`` of every other setting in ``values`` against ``baseline``, in first-seen order."""
    names = list(dict.fromkeys(s for s, _ in values))
    return [paired(values, s, baseline) for s in names if s != baseline]


def describe(p: Paired) -> str:
    """``b − a paired +0.0200 [+0.0100, +0.0300] (seed 0 +0.0100, seed 1 +0.0300); unpaired
    means 1.1000 vs 1.0800`` (a setting with no common seed: its unpaired means alone)."""
    means = f"unpaired means {p.setting_mean:.4f} vs {p.baseline_mean:.4f}"
    if not p.by_seed:
        return f"{p.setting} − {p.baseline}: no common seed; {means}"
    lo, hi = p.range
    seeds = ", ".join(f"seed {k} {d:+.4f}" for k, d in p.by_seed.items())
    return f"{p.setting} − {p.baseline} paired {p.mean:+.4f} [{lo:+.4f}, {hi:+.4f}] ({seeds}); {means}"
