"""Per-run numbers (final losses, tokens, wall-clock, step time, divergence) and settings: the
runs that share every non-seed axis value, aggregated over their seeds as mean ± half-range."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re

import numpy as np

from experiments.reporting.load import Run, Sweep, finite, number

FINAL_PERCENT = 5  # the final train loss is the mean of the last 5% of train records
RESUMED = re.compile(r"resumed at step (\d+)")
AT_STEP = re.compile(r"at step (\d+)")


@dataclasses.dataclass
class RunSummary:
    """The numbers of one run. Losses are nan where there is none (or it is not finite)."""

    run: Run
    steps: int | None  # the last logged step
    tokens: float | None  # tokens seen at the last train record
    wall_s: float | None  # training time the loop measured (compilation and evaluation included)
    median_step_s: float | None  # median step_time_s, records right after a (re)start left out
    final_train: float
    final_val: float
    diverged_step: int | None  # first non-finite loss, or the step a failure names
    divergence: str  # "" when the run neither diverged nor failed


def final_train_loss(train: list[dict]) -> float:
    """Mean loss of the last 5% of train records (at least one; nan if any of them is not finite)."""
    losses = [number(r["loss"]) for r in train if "loss" in r]
    if not losses:
        return math.nan
    k = max(1, math.ceil(len(losses) * FINAL_PERCENT / 100))
    return float(np.mean(losses[-k:]))


def final_val_loss(val: list[dict]) -> float:
    """The loss of the last val record (nan without one)."""
    losses = [number(r["loss"]) for r in val if "loss" in r]
    return losses[-1] if losses else math.nan


def interval_seconds(run: Run) -> np.ndarray:
    """Seconds each train record covers. The loop logs ``step_time_s`` as the time since the
    previous record divided by ``train.log_every``, so that product is the interval's time."""
    log_every = run.config.get("train", {}).get("log_every")
    steps = [r["step"] for r in run.train]
    out = []
    for i, r in enumerate(run.train):
        per = log_every if log_every else steps[i] - (steps[i - 1] if i else 0)
        out.append(number(r.get("step_time_s", math.nan)) * per)
    return np.asarray(out, dtype=float)


def median_step_time(run: Run) -> float | None:
    """Median ``step_time_s``, without the first record after each start or resume (compilation)."""
    starts = {0} | {int(m) for m in RESUMED.findall(run.log_text)}
    times, previous = [], None
    for r in run.train:
        fresh = previous is None or any(previous <= s < r["step"] for s in starts)
        if not fresh and finite(r.get("step_time_s")):
            times.append(number(r["step_time_s"]))
        previous = r["step"]
    if not times:
        times = [number(r["step_time_s"]) for r in run.train if finite(r.get("step_time_s"))]
    return float(np.median(times)) if times else None


def first_nonfinite_step(run: Run) -> int | None:
    """The first step whose train or val loss is not finite."""
    bad = [r["step"] for r in run.train + run.val if "loss" in r and not finite(r["loss"])]
    return min(bad) if bad else None


def summarize(run: Run) -> RunSummary:
    steps = [r["step"] for r in run.train + run.val]
    tokens = [number(r["tokens"]) for r in run.train if "tokens" in r]
    intervals = interval_seconds(run)
    nonfinite = first_nonfinite_step(run)
    what = []
    if nonfinite is not None:
        what.append("loss not finite")
    diverged = nonfinite
    if run.status == "failed":
        what.append("failed")
        named = AT_STEP.search(run.reason)
        if diverged is None:
            diverged = int(named.group(1)) if named else (max(steps) if steps else None)
    return RunSummary(run, max(steps) if steps else None, tokens[-1] if tokens else None,
                      float(np.nansum(intervals)) if len(intervals) else None, median_step_time(run),
                      final_train_loss(run.train), final_val_loss(run.val), diverged, ", ".join(what))


# ---- settings ----
def fmt(value) -> str:
    """An axis value as text: scalars as Python prints them, anything else as JSON."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return str(value)
    return json.dumps(value, sort_keys=True)


def is_seed_axis(axis: str) -> bool:
    return axis.split(".")[-1] == "seed"


@dataclasses.dataclass
class Setting:
    """The runs sharing one value on every non-seed axis."""

    values: dict  # non-seed axis -> value
    runs: list[RunSummary]

    @property
    def key(self) -> tuple:
        return tuple((a, fmt(v)) for a, v in self.values.items())

    @property
    def label(self) -> str:
        return ", ".join(f"{a}={fmt(v)}" for a, v in self.values.items()) or "all runs"

    def seeds(self, seed_axes: list[str]) -> str:
        if not seed_axes:
            return str(len(self.runs))
        return ", ".join("/".join(fmt(r.run.value(a)) for a in seed_axes) for r in self.runs)

    def status_counts(self) -> dict[str, int]:
        return dict(collections.Counter(r.run.status for r in self.runs))

    def median_step_s(self) -> float | None:
        times = [r.median_step_s for r in self.runs if r.median_step_s is not None]
        return float(np.median(times)) if times else None


def spread(values) -> tuple[float, float, int]:
    """(mean, half-range, count) over the finite values; (nan, nan, 0) without any."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float((v.max() - v.min()) / 2), len(v)


def settings(sweep: Sweep, summaries: list[RunSummary]) -> list[Setting]:
    """Settings in order of first appearance; each holds its runs in sweep order."""
    axes = [a for a in sweep.axes if not is_seed_axis(a)]
    out: dict[tuple, Setting] = {}
    for s in summaries:
        values = {a: s.run.value(a) for a in axes}
        key = tuple((a, fmt(v)) for a, v in values.items())
        out.setdefault(key, Setting(values, [])).runs.append(s)
    return list(out.values())
