"""Numerics telemetry per setting and GEMM role: the mean saturated, OCC-clamped and
flushed-to-zero (underflow) fractions, the SQNR and the operand's outlier statistics (max/std,
kurtosis), over layers and telemetry records (``lowprec.ops.telemetry`` defines the
statistics), as table rows and a heatmap."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.reporting.load import Run, finite, number  # noqa: E402
from experiments.reporting.summary import Setting  # noqa: E402
from lowprec.ops.recipe import ROLES  # noqa: E402

# (statistic, column title, factor): fractions are shown in percent.
STATS = (("saturated", "saturated %", 100.0), ("clamped", "clamped (OCC) %", 100.0),
         ("flushed", "underflow %", 100.0), ("sqnr_db", "SQNR dB", 1.0),
         ("max_over_std", "max/std", 1.0), ("kurtosis", "kurtosis", 1.0))
# Decimals shown for these statistics (the fractions get 4, in percent).
DIGITS = {"sqnr_db": 1, "max_over_std": 1, "kurtosis": 1}
CMAPS = {"sqnr_db": "viridis"}  # higher is better; the fractions use "Reds" (higher is worse)
# Operands that pass (nearly) exactly read 100+ dB; colors stop here so that the lossy ones differ.
SQNR_COLOR_MAX_DB = 60.0


@dataclasses.dataclass
class Row:
    """One setting × role: how many layers and runs report it, and each statistic's mean."""

    setting: Setting
    role: str
    layers: int
    runs: int
    values: dict[str, float]


def parse_key(name: str) -> tuple[str, str, str] | None:
    """``"blocks/mlp/up[1]/fwd_act/sqnr_db"`` -> (layer, role, stat); None for other keys."""
    parts = name.rsplit("/", 2)
    return tuple(parts) if len(parts) == 3 else None


def run_means(run: Run) -> dict[str, tuple[dict[str, float], int]]:
    """{role: ({stat: mean over records and layers}, number of layers)} of one run."""
    values: dict[str, dict[str, list[float]]] = {}
    layers: dict[str, set] = {}
    wanted = {s for s, _, _ in STATS}
    for record in run.telemetry:
        for name, value in record.items():
            parsed = parse_key(name)
            if parsed is None or parsed[2] not in wanted or not finite(value):
                continue
            layer, role, stat = parsed
            values.setdefault(role, {}).setdefault(stat, []).append(number(value))
            layers.setdefault(role, set()).add(layer)
    return {role: ({s: float(np.mean(v)) for s, v in stats.items()}, len(layers[role]))
            for role, stats in values.items()}


def _role_order(roles) -> list[str]:
    return [r for r in ROLES if r in roles] + sorted(r for r in roles if r not in ROLES)


def summarize(settings: list[Setting]) -> list[Row]:
    """Rows of the settings with telemetry, roles in ``ROLES`` order; a statistic is averaged
    over the setting's runs that report the role."""
    rows = []
    for s in settings:
        per_run = [run_means(r.run) for r in s.runs]
        roles = _role_order({role for m in per_run for role in m})
        for role in roles:
            have = [m[role] for m in per_run if role in m]
            values = {stat: float(np.mean([v[stat] for v, _ in have if stat in v]))
                      for stat, _, _ in STATS if any(stat in v for v, _ in have)}
            rows.append(Row(s, role, max(n for _, n in have), len(have), values))
    return rows


def plot_heatmap(rows: list[Row], path: str) -> None:
    """One panel per statistic: settings × roles, each cell annotated with its value."""
    labels = list(dict.fromkeys(r.setting.label for r in rows))
    roles = _role_order({r.role for r in rows})
    cols = -(-len(STATS) // 2)  # two rows of panels: the figure stays readable on a page
    fig, axs = plt.subplots(2, cols, figsize=(min(16.0, 1.2 * len(roles) * cols + 3.5),
                                              2 * (0.45 * len(labels) + 1.6)), dpi=100, squeeze=False)
    for ax in axs.flat[len(STATS):]:
        ax.axis("off")
    for i, (ax, (stat, title, factor)) in enumerate(zip(axs.flat, STATS)):
        grid = np.full((len(labels), len(roles)), np.nan)
        for r in rows:
            if stat in r.values:
                grid[labels.index(r.setting.label), roles.index(r.role)] = r.values[stat] * factor
        cmap = plt.get_cmap(CMAPS.get(stat, "Reds")).with_extremes(bad="0.9")
        top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 0.0
        vmax = SQNR_COLOR_MAX_DB if stat == "sqnr_db" else (top if top > 0 else 1.0)  # all zero: white
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", vmin=0.0, vmax=vmax)
        for (row, col), v in np.ndenumerate(grid):
            if np.isfinite(v):
                text = f"{v:.{DIGITS[stat]}f}" if stat in DIGITS else f"{v:.2g}"
                ax.text(col, row, text, ha="center", va="center", fontsize=7, color="black",
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", alpha=0.6, lw=0))
        ax.set_xticks(range(len(roles)), roles, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels if i % cols == 0 else [""] * len(labels), fontsize=8)
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("Numerics telemetry: mean over layers, telemetry records and seeds "
                 f"(grey: no data; SQNR colors stop at {SQNR_COLOR_MAX_DB:.0f} dB)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
