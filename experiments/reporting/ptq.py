"""The PTQ report: loss increase per setting and model size, sizes against bf16, layer SQNR."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLUMNS = (("setting", "{}"), ("loss before", "{:.4f}"), ("after", "{:.4f}"), ("increase", "{:+.4f}"),
           ("bits/weight", "{:.2f}"), ("memory vs bf16", "{:.1%}"), ("disk vs bf16", "{:.1%}"),
           ("weight SQNR dB", "{:.1f}"), ("output SQNR dB", "{:.1f}"))


def _cells(r: dict) -> list[str]:
    values = (r["setting"], r["loss_before"], r["loss_after"], r["loss_increase"], r["bits_per_weight"],
              r["memory_bytes"] / r["bf16_memory_bytes"], r["disk_bytes"] / r["bf16_disk_bytes"],
              r["weight_sqnr_db"], r["output_sqnr_db"])
    return ["-" if v is None else f.format(v) for (_, f), v in zip(COLUMNS, values)]


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(f"{r['size']} ({r['params'] / 1e6:.1f}M parameters, {r['checkpoint']})", []).append(r)
    return out


def table(rows: list[dict]) -> str:
    """Plain-text tables, one per checkpoint."""
    lines = []
    for title, group in _groups(rows).items():
        cells = [[name for name, _ in COLUMNS]] + [_cells(r) for r in group]
        widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
        lines.append(title)
        lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                  for row in cells]
        lines.append("")
    return "\n".join(lines)


def plot_increase(rows: list[dict], path: str) -> None:
    """Loss increase of every setting (x) for each model size (bars), one panel per method."""
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(len(methods), 1, figsize=(12, 3.4 * len(methods)), dpi=100, squeeze=False,
                             layout="constrained")
    for ax, method in zip(axes[:, 0], methods):
        names = list(dict.fromkeys(r["setting"].replace(f"/{method}", "") for r in rows if r["method"] == method))
        x, width = np.arange(len(names)), 0.8 / max(len(sizes), 1)
        for j, size in enumerate(sizes):
            got = {r["setting"].replace(f"/{method}", ""): r["loss_increase"] for r in rows
                   if r["method"] == method and r["size"] == size}
            ax.bar(x + (j - (len(sizes) - 1) / 2) * width, [got.get(n, np.nan) for n in names], width, label=size)
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel("held-out loss increase (nats)")
        ax.set_title(f"weights rounded by {method}")
        ax.legend(title="model", fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def write_report(out: str, rows: list[dict]) -> None:
    """``report.md`` and ``ptq_loss_increase.png`` in ``out`` (beside ``results.json``)."""
    os.makedirs(out, exist_ok=True)
    plot_increase(rows, os.path.join(out, "ptq_loss_increase.png"))
    env_path = os.path.join(out, "results.json")
    saved = json.load(open(env_path)) if os.path.exists(env_path) else {}
    env = saved.get("sources") or saved.get("environment", {})  # a merge lists where each part ran
    md = ["# Post-training quantization", "",
          "Held-out loss (nats per token of the run's own validation split) before and after quantizing the "
          "attention and MLP weights (W) and optionally their inputs (A); embeddings and LM head stay bf16. "
          "Sizes count codes, scales and the bf16 rest; disk is the orbax checkpoint of the quantized model. "
          "Weight SQNR is over the quantized kernels; output SQNR is of each layer's output on the "
          "calibration inputs (mean over layers).", "",
          "![loss increase](ptq_loss_increase.png)", ""]
    for title, group in _groups(rows).items():
        md += [f"## {title}", "", "| " + " | ".join(n for n, _ in COLUMNS) + " |",
               "|" + "---|" * len(COLUMNS)]
        md += ["| " + " | ".join(_cells(r)) + " |" for r in group]
        md.append("")
    if env:
        md += ["## Produced by", "", "```", json.dumps(env, indent=1), "```", ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md))
