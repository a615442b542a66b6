"""The final-numbers figure: each setting's final loss (a point at the mean, whiskers over the
seeds' min–max) next to its median step time relative to its baseline, in the loss curves' colors."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.reporting.summary import Setting, fmt  # noqa: E402


def plot_final(settings: list[Setting], line_axes: list[str], colors: dict, ratios: dict[tuple, float | None],
               baseline: str, path: str) -> None:
    """Per setting: final val loss (final train loss where no run was evaluated) and step-time ratio."""
    use_val = any(math.isfinite(r.final_val) for s in settings for r in s.runs)
    fig, (ax_loss, ax_time) = plt.subplots(1, 2, figsize=(12.0, 2.0 + 0.32 * len(settings)), dpi=100,
                                           layout="constrained")
    y = np.arange(len(settings))
    labels = [s.label for s in settings]
    for i, s in enumerate(settings):
        color = colors[tuple(fmt(s.values[a]) for a in line_axes)]
        losses = np.asarray([r.final_val if use_val else r.final_train for r in s.runs], dtype=float)
        losses = losses[np.isfinite(losses)]
        if len(losses):
            mean = losses.mean()
            ax_loss.errorbar(mean, i, xerr=[[mean - losses.min()], [losses.max() - mean]], fmt="o", color=color,
                             ms=7, capsize=4)
        ratio = ratios.get(s.key)
        if ratio is not None and math.isfinite(ratio):
            ax_time.barh(i, ratio, color=color)
            ax_time.text(ratio, i, f" {ratio:.2f}×", va="center", fontsize=8)
    finite = [r.final_val if use_val else r.final_train for s in settings for r in s.runs]
    finite = [v for v in finite if math.isfinite(v)]
    if finite:  # zoom to where the settings differ
        lo, hi = min(finite), max(finite)
        pad = max(hi - lo, 1e-3 * hi) * 0.3
        ax_loss.set_xlim(max(0.0, lo - pad), hi + pad)
    for ax in (ax_loss, ax_time):
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    ax_time.set_yticklabels([""] * len(labels))
    ax_loss.set_xlabel(f"final {'val' if use_val else 'train'} loss (point: mean; whiskers: min–max over seeds)")
    ax_loss.set_title(f"Final {'val' if use_val else 'train'} loss", fontsize=10)
    ax_time.axvline(1.0, color="black", lw=0.8)
    ax_time.set_xlabel("median step time ÷ baseline's")
    ax_time.set_title(f"Step time vs baseline: {baseline}", fontsize=10)
    fig.savefig(path)
    plt.close(fig)
