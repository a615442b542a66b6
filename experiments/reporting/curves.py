"""Loss curves: each run's train (lightly smoothed) and val losses on a chosen x axis, their
mean and min–max band over a setting's seeds, and the figure of them, one panel per value of
the panel axes (the FP4 paper's Figure 6 layout), with × where a run diverged or failed."""

from __future__ import annotations

import dataclasses
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import EngFormatter, FuncFormatter  # noqa: E402

from experiments.reporting.load import Run, finite, number  # noqa: E402
from experiments.reporting.summary import RunSummary, Setting, fmt, interval_seconds  # noqa: E402

X_KINDS = ("tokens", "step", "time")
SMOOTH_PERCENT = 5  # trailing mean over 5% of a run's train records (at least one): light smoothing
SKIP_PERCENT = 10  # the automatic loss axis starts after the first 10% of the x range
MAX_COLUMNS = 3
PANEL_IN = (4.3, 3.6)  # inches per panel at 100 dpi: three columns and the legend stay under 1600 px
LEGEND_IN = 2.4
DPI = 100


def palette(keys: list[tuple]) -> dict[tuple, tuple]:
    """One color per line key, in order, the same in every figure."""
    if len(keys) <= 20:
        cmap = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
        return {k: cmap(i) for i, k in enumerate(keys)}
    cmap = plt.get_cmap("turbo")
    return {k: cmap(i / (len(keys) - 1)) for i, k in enumerate(keys)}


@dataclasses.dataclass
class Series:
    steps: np.ndarray
    x: np.ndarray
    y: np.ndarray


def tokens_per_step(run: Run) -> float:
    """From the train records (tokens / step), else from the config (batch_size × seq_len)."""
    for r in reversed(run.train):
        if "tokens" in r and r["step"]:
            return number(r["tokens"]) / r["step"]
    data = run.config.get("data", {})
    return float(data.get("batch_size", math.nan)) * float(data.get("seq_len", math.nan))


def x_of(run: Run, steps, kind: str) -> np.ndarray:
    """Steps as tokens seen, steps, or wall-clock seconds (interpolated between train records)."""
    steps = np.asarray(steps, dtype=float)
    if kind == "step":
        return steps
    if kind == "tokens":
        return steps * tokens_per_step(run)
    train_steps = np.asarray([0] + [r["step"] for r in run.train], dtype=float)
    elapsed = np.concatenate([[0.0], np.cumsum(np.nan_to_num(interval_seconds(run)))])
    return np.interp(steps, train_steps, elapsed)


def smooth(y: np.ndarray) -> np.ndarray:
    """Trailing mean over ``SMOOTH_PERCENT`` of the points."""
    w = max(1, round(len(y) * SMOOTH_PERCENT / 100))
    c = np.concatenate([[0.0], np.cumsum(y)])
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - w, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def train_series(run: Run, kind: str) -> Series:
    """Smoothed train loss up to (not including) the first non-finite value."""
    steps, losses = [], []
    for r in run.train:
        if "loss" not in r:
            continue
        if not finite(r["loss"]):
            break
        steps.append(r["step"])
        losses.append(number(r["loss"]))
    return Series(np.asarray(steps), x_of(run, steps, kind), smooth(np.asarray(losses, dtype=float)))


def val_series(run: Run, kind: str) -> Series:
    pts = [(r["step"], number(r["loss"])) for r in run.val if "loss" in r and finite(r["loss"])]
    steps = [s for s, _ in pts]
    return Series(np.asarray(steps), x_of(run, steps, kind), np.asarray([v for _, v in pts], dtype=float))


def band(series: list[Series]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, min, max) over the series at every step any of them has (x averaged too)."""
    steps = sorted({int(s) for ser in series for s in ser.steps})
    xs, mean, lo, hi = [], [], [], []
    for step in steps:
        pts = [(ser.x[i], ser.y[i]) for ser in series for i in np.flatnonzero(ser.steps == step)]
        ys = np.asarray([p[1] for p in pts])
        xs.append(np.mean([p[0] for p in pts]))
        mean.append(ys.mean())
        lo.append(ys.min())
        hi.append(ys.max())
    return tuple(np.asarray(a, dtype=float) for a in (xs, mean, lo, hi))


def time_unit(seconds: float) -> tuple[float, str]:
    if seconds > 2 * 3600:
        return 3600.0, "h"
    if seconds > 120:
        return 60.0, "min"
    return 1.0, "s"


def divergence_point(s: RunSummary, kind: str) -> tuple[float, float] | None:
    """Where a run's × goes: its divergence step, at its last finite smoothed train loss."""
    if s.diverged_step is None:
        return None
    ser = train_series(s.run, kind)
    before = np.flatnonzero(ser.steps <= s.diverged_step)
    if not len(before):
        return None
    return float(x_of(s.run, [s.diverged_step], kind)[0]), float(ser.y[before[-1]])


def plot_losses(panels: dict[str, list[Setting]], line_axes: list[str], colors: dict, kind: str, path: str,
                log_y: bool = False, ylim: tuple[float, float] | None = None) -> None:
    """Writes the loss-curve figure: one panel per entry of ``panels`` (title -> settings), one
    legend for all (a line key has the same color in every panel). Without ``ylim`` the loss
    axis spans the curves after the first ``SKIP_PERCENT`` of the x range, so that the initial
    drop does not flatten the differences that matter."""
    ncols = min(MAX_COLUMNS, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    panel_w = PANEL_IN[0] if ncols > 1 else 7.0
    fig, axs = plt.subplots(nrows, ncols, figsize=(panel_w * ncols + LEGEND_IN, PANEL_IN[1] * nrows + 0.5), dpi=DPI,
                            squeeze=False, layout="constrained")
    all_runs = [r for group in panels.values() for s in group for r in s.runs]
    scale, unit = 1.0, ""
    if kind == "time":
        scale, unit = time_unit(max([x_of(r.run, [r.steps or 0], "time")[0] for r in all_runs] + [0.0]))
    entries, marked, spans = {}, False, []
    for ax, (title, group) in zip(axs.flat, panels.items()):
        drawn, panel_marked, panel_spans = _draw_panel(ax, group, line_axes, colors, kind, scale)
        entries.update(drawn)
        marked |= panel_marked
        spans += panel_spans
        if title:
            ax.set_title(title, fontsize=10)
        ax.set_xlabel({"tokens": "tokens seen", "step": "step", "time": f"wall-clock ({unit})"}[kind])
        ax.set_ylabel("loss (nats per token)")
        if kind == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter())
        if log_y:  # losses span less than a decade: label the minor ticks too
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.grid(alpha=0.3)
    limits = ylim or _auto_ylim(spans)
    for ax in list(axs.flat)[:len(panels)]:
        if limits:
            ax.set_ylim(*limits)
    for ax in list(axs.flat)[len(panels):]:
        ax.set_visible(False)
    handles = list(entries.values()) + [
        Patch(color="gray", alpha=0.25, label="min–max over seeds"),
        Line2D([], [], color="gray", marker="o", ls="", mec="black", mew=0.5, label="val loss (mean)")]
    if marked:
        handles.append(Line2D([], [], color="gray", marker="x", ls="", mew=2.5, ms=9, label="diverged / failed"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title=", ".join(line_axes) or None,
               title_fontsize=9)
    fig.suptitle("Train loss (smoothed, mean over seeds) and val loss", fontsize=11)
    fig.savefig(path)
    plt.close(fig)


def _auto_ylim(spans: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[float, float] | None:
    """Loss limits covering every band after the first ``SKIP_PERCENT`` of the x range."""
    if not spans:
        return None
    x_max = max(float(x.max()) for x, _, _ in spans)
    lows, highs = [], []
    for x, lo, hi in spans:
        keep = x >= x_max * SKIP_PERCENT / 100
        if keep.any():
            lows.append(float(lo[keep].min()))
            highs.append(float(hi[keep].max()))
    if not lows:
        return None
    lo, hi = min(lows), max(highs)
    pad = max(hi - lo, 1e-3 * abs(hi)) * 0.08
    return lo - pad, hi + pad


def _draw_panel(ax, group: list[Setting], line_axes: list[str], colors: dict, kind: str, scale: float):
    """Draws one panel; returns its legend entries, whether it has a × and its (x, min, max) spans."""
    entries, marked, spans = {}, False, []
    for s in group:
        key = tuple(fmt(s.values[a]) for a in line_axes)
        color = colors[key]
        train = [ser for ser in (train_series(r.run, kind) for r in s.runs) if len(ser.steps)]
        if train:
            x, mean, lo, hi = band(train)
            entries[key] = ax.plot(x / scale, mean, color=color, lw=1.6, label=", ".join(key) or s.label)[0]
            if len(train) > 1:
                ax.fill_between(x / scale, lo, hi, color=color, alpha=0.2, lw=0)
            spans.append((x, lo, hi))
        val = [ser for ser in (val_series(r.run, kind) for r in s.runs) if len(ser.steps)]
        if val:
            x, mean, lo, hi = band(val)
            ax.plot(x / scale, mean, "o", color=color, ms=5, mec="black", mew=0.5)
            spans.append((x, lo, hi))
        for r in s.runs:
            point = divergence_point(r, kind)
            if point is not None:
                ax.plot(point[0] / scale, point[1], "x", color=color, ms=11, mew=2.5, zorder=5)
                marked = True
    return entries, marked, spans
