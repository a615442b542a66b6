"""The fine-tune order study's report: ``python -m experiments.finetune_order_report runs/finetune_order``.

Reads the sweeps ``<root>/<size>-<format>`` of ``configs/finetune_order.py`` and writes
``report.md``, ``results.csv`` and ``finetune_order.png`` into ``--out`` (default: the root): for
every arm, the domain validation loss of the fine-tuned model in bf16 (``val``) and with its
weights in the study's format (``val_quantized``, what would be deployed), at the last step.
Runs that are not done are listed as such, never silently dropped.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.reporting import load  # noqa: E402

SWEEP_DIR = re.compile(r"^(?P<size>[a-z0-9]+)-(?P<format>int4|nf4)$")
ARMS = (  # (label, order, how to recognize the run's config)
    ("no fine-tuning", "-", lambda v: v("finetune.mode") == "full" and float(v("optim.lr")) == 0),
    ("full bf16, then RTN", "fine-tune first", lambda v: v("finetune.mode") == "full" and float(v("optim.lr")) > 0),
    ("LoRA bf16, merge, then RTN", "fine-tune first", lambda v: v("finetune.mode") == "lora"),
    ("QAT (STE)", "quantize first", lambda v: v("finetune.mode") == "qat" and v("finetune.qat_estimator") == "ste"),
    ("QAT (DGE)", "quantize first", lambda v: v("finetune.mode") == "qat" and v("finetune.qat_estimator") == "dge"),
    ("QLoRA, merge, requantize", "quantize first", lambda v: v("finetune.mode") == "qlora"),
)


def _arm(run: load.Run) -> tuple[str, str]:
    """The arm of a run, from its config or, for one that never started, its sweep overrides."""
    for label, order, match in ARMS:
        try:
            if match(run.value):
                return label, order
        except (TypeError, ValueError):
            continue
    return "other", "-"


def started_from(records: list[dict]) -> str | None:
    """The fingerprint of the pretrained checkpoint a fine-tune started from (its ``init``
    record; None for a run that has none: not started, or older than the record)."""
    found = [r.get("checkpoint") for r in records if r.get("split") == "init"]
    return found[-1] if found else None


def _last(metrics: list[dict]) -> float:
    return load.number(metrics[-1]["loss"]) if metrics else math.nan


def rows(root: str) -> list[dict]:
    """One row per run of every ``<size>-<format>`` sweep under ``root``."""
    out = []
    for name in sorted(os.listdir(root)):
        m = SWEEP_DIR.match(name)
        if not m or not os.path.isdir(os.path.join(root, name)):
            continue
        for run in load.load(os.path.join(root, name)).runs:
            records = load.read_metrics(os.path.join(run.path, "metrics.jsonl")) if os.path.isdir(run.path) else []
            quantized = [r for r in records if r.get("split") == "val_quantized"]
            label, order = _arm(run)
            out.append({"size": m["size"], "format": m["format"], "arm": label, "order": order, "status": run.status,
                        "steps": run.train[-1]["step"] if run.train else 0,
                        "val": _last(run.val), "val_quantized": _last(quantized),
                        "pretrained": started_from(records) or "unknown", "run": run.id})
    if not out:
        raise SystemExit(f"error: no <size>-<format> sweeps (e.g. 20m-int4) under {root}")
    order = {label: i for i, (label, _, _) in enumerate(ARMS)}
    return sorted(out, key=lambda r: (_size_key(r["size"]), r["format"], order.get(r["arm"], 99)))


def _size_key(size: str) -> float:
    m = re.match(r"(\d+)([mb])", size)
    return float(m[1]) * (1e3 if m[2] == "b" else 1) if m else math.inf


def _f(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.4f}"


def plot(table: list[dict], path: str) -> None:
    groups = list(dict.fromkeys((r["size"], r["format"]) for r in table))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.2), dpi=100, squeeze=False,
                             layout="constrained")
    for ax, (size, fmt) in zip(axes[0], groups):
        got = [r for r in table if (r["size"], r["format"]) == (size, fmt) and r["arm"] != "no fine-tuning"
               and r["status"] == "done"]
        y = np.arange(len(got))
        colors = ["tab:blue" if r["order"] == "fine-tune first" else "tab:orange" for r in got]
        ax.barh(y, [r["val_quantized"] for r in got], color=colors)
        ax.scatter([r["val"] for r in got], y, color="k", marker="|", s=200, zorder=3, label="before rounding (bf16)")
        ax.set_yticks(y, [r["arm"] for r in got], fontsize=8)
        finite = [v for r in got for v in (r["val"], r["val_quantized"]) if math.isfinite(v)]
        if finite:
            lo, hi = min(finite), max(finite)
            ax.set_xlim(lo - 0.3 * (hi - lo + 1e-3), hi + 0.3 * (hi - lo + 1e-3))
        ax.set_xlabel(f"domain val loss, weights in {fmt}")
        ax.set_title(f"{size}, {fmt}", fontsize=9)
        ax.invert_yaxis()
        ax.legend(fontsize=7)
    fig.suptitle("finished runs; blue: fine-tune first, then quantize; orange: quantize first", fontsize=9)
    fig.savefig(path)
    plt.close(fig)


def write(root: str, out: str) -> list[dict]:
    table = rows(root)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    plot(table, os.path.join(out, "finetune_order.png"))
    md = ["# Fine-tune order: quantize then fine-tune, or fine-tune then quantize?", "",
          "Domain validation loss (nats per byte, Shakespeare) after fine-tuning the same pretrained model "
          "for the same steps. `val`: the fine-tuned weights in bf16 (adapters unmerged); `val quantized`: "
          "with the targeted weights in the study's format (what is deployed). Lower is better.", "",
          "![fine-tune order](finetune_order.png)", ""]
    for size, fmt in dict.fromkeys((r["size"], r["format"]) for r in table):
        md += [f"## {size}, {fmt}", ""]
        starts = sorted({r["pretrained"] for r in table if r["size"] == size and r["status"] == "done"})
        if len(starts) > 1:
            md += [f"**Warning: the {size} runs did not all start from one pretrained checkpoint** ({', '.join(starts)}): "
                   "arms from different checkpoints are not compared at equal start. "
                   "`python -m experiments.finetune_order` trains such arms again.", ""]
        elif starts == ["unknown"]:
            md += [f"Which pretrained checkpoint the {size} runs started from is not recorded (runs older than the "
                   "record): that they all started from the same one is not checked.", ""]
        md += ["| arm | order | status | steps | val | val quantized | pretrained checkpoint |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {r['arm']} | {r['order']} | {r['status']} | {r['steps']} | {_f(r['val'])} | {_f(r['val_quantized'])} "
               f"| {r['pretrained']} |" for r in table if (r["size"], r["format"]) == (size, fmt)]
        md.append("")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md))
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the study's directory (holding <size>-<format> sweeps)")
    parser.add_argument("--out", default="", help="where report.md, results.csv and the figure go (default: root)")
    args = parser.parse_args(argv)
    table = write(args.root, args.out or args.root)
    for r in table:
        print(f"{r['size']:5s} {r['format']:5s} {r['arm']:28s} {r['status']:12s} val {_f(r['val'])}  "
              f"quantized {_f(r['val_quantized'])}")
    print(f"wrote {os.path.join(args.out or args.root, 'report.md')}")


if __name__ == "__main__":
    main()
