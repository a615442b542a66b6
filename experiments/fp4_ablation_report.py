"""The FP4 ablation study's report: each sub-sweep's final losses and the paper's claims checked.

    python -m experiments.fp4_ablation_report runs/fp4_ablation --out experiments/results/fp4_ablation --figures

Reads the runs of every sub-sweep of ``configs/fp4_ablation.py`` (a-e, parts, lr, dge_lr) from the sweep
root and writes into ``--out``: ``report.md`` (the claims of the FP4 paper's ablations,
REFERENCE.md §3.1, each checked against the runs, then a table of final validation losses per
sub-sweep) and ``claims.csv``; with ``--figures`` also the full sweep report of each sub-sweep
that has started, in ``<out>/<sub-sweep>/`` (``experiments.report --only``: loss curves with the
seeds as bands, final losses, telemetry).

How a claim is checked: see ``METHOD`` (also printed in the report).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys

from experiments import paired
from experiments import report as sweep_report
from experiments.reporting import load, markdown, summary
from launch import sweep

SPEC = "configs/fp4_ablation.py"
SUBSWEEPS = {"a": "precision", "b": "weights only, W4A8: STE vs DGE", "c": "activations only, W8A4: direct vs OCC",
             "d": "granularity (full method)", "e": "FP4 element format (full method)",
             "parts": "which half of the full method", "lr": "3x learning rate",
             "dge_lr": "W4A8, STE vs DGE at a 3x smaller learning rate"}
METHOD = ("A claim compares the final validation loss (nats per byte) of settings, mean ± half-range over "
          "seeds. \"A < B\" holds when A's mean is below B's; it is *clear* when every seed agrees (A below B "
          "for each seed: same seed, same initialization and data order), else *mixed across seeds*. The evidence gives "
          "the paired (same-seed) differences B − A per seed, their mean and range, beside the gap of the "
          "unpaired means. \"A ≈ B\" "
          "holds when the gap of the means is at most the larger of the two half-ranges. A setting with a run "
          "that diverged or failed counts as worse than any that finished. A claim is *incomplete* while one "
          "of its settings has a run that has not finished. Where the runs of two settings ran on different GPUs, "
          "the evidence says so: a rerun on other hardware changes a loss by itself.")
LT, NEAR = "<", "≈"
TENSOR = "fp4_wtensor_atensor"  # the full method with one scale per tensor for weights and activations
CLAIMS = (  # (sub-sweep, the paper's claim, comparisons that must all hold)
    ("a", "FP8 ≈ BF16", [("fp8", NEAR, "bf16")]),
    ("a", "the full method (W4A4 + DGE + OCC) ≈ BF16", [("fp4_paper", NEAR, "bf16")]),
    ("a", "plain W4A4 is worse than the full method", [("fp4_paper", LT, "w4a4")]),
    ("b", "W4A8: DGE (k = 5) beats direct quantization (STE)", [("w4a8_dge5", LT, "w4a8")]),
    ("b", "W4A8: k = 5 beats k = 3 and k = 10", [("w4a8_dge5", LT, "w4a8_dge3"), ("w4a8_dge5", LT, "w4a8_dge10")]),
    ("c", "W8A4: OCC beats direct quantization (which diverges in the paper)",
     [(f"w8a4_occ{a}", LT, "w8a4") for a in ("999", "99", "97")]),
    ("c", "W8A4 with OCC: the smaller alpha, the lower the loss",
     [("w8a4_occ97", LT, "w8a4_occ99"), ("w8a4_occ99", LT, "w8a4_occ999")]),
    ("c", "W8A4: compensation helps at every alpha", [(f"w8a4_occ{a}", LT, f"w8a4_clamp{a}") for a in ("999", "99", "97")]),
    ("d", "vector-wise weights (channel) and activations (token) are best",
     [("fp4_paper", LT, other) for other in ("fp4_wtensor_atensor", "fp4_wtensor_atoken", "fp4_wchannel_atensor")]),
    ("d", "tensor-wise activations hurt more than tensor-wise weights", [("fp4_wtensor_atoken", LT, "fp4_wchannel_atensor")]),
    ("d", "tensor-wise FP4 (weights and activations) fails: worse than vector-wise", [("fp4_paper", LT, TENSOR)]),
    ("e", "E2M1, the element format the paper trains with, beats E1M2 and E3M0",
     [("fp4_paper", LT, "fp4_e1m2"), ("fp4_paper", LT, "fp4_e3m0")]),
    ("lr", "at 3x the learning rate, the full method beats plain W4A4", [("fp4_paper", LT, "w4a4")]),
    ("lr", "at 3x the learning rate, the full method ≈ BF16", [("fp4_paper", NEAR, "bf16")]),
    ("lr", "at 3x the learning rate, tensor-wise FP4 fails: worse than vector-wise", [("fp4_paper", LT, TENSOR)]),
    ("dge_lr", "W4A8 at a 3x smaller learning rate: DGE (k = 5) beats STE", [("w4a8_dge5", LT, "w4a8")]),
)


@dataclasses.dataclass
class Stat:
    """A setting's runs: how many, how many finished, the final validation losses of the finished."""

    name: str
    runs: int
    finished: int
    diverged: bool
    by_seed: dict  # seed -> final validation loss, of the runs that finished without diverging
    devices: tuple = ()  # the device kinds its runs' logs name

    @property
    def values(self) -> list[float]:
        return list(self.by_seed.values())

    @property
    def mean(self) -> float:
        return summary.spread(self.values)[0]

    @property
    def half(self) -> float:
        return summary.spread(self.values)[1] if self.values else math.nan

    @property
    def key(self) -> float:
        """For ordering: the mean, or +inf when a run diverged or failed."""
        return math.inf if self.diverged else self.mean

    def cell(self) -> str:
        if self.diverged:
            return "diverged or failed"
        return f"{self.mean:.4f} ± {self.half:.4f}" if self.values else "-"


def settings(root: str, sub: str) -> dict[str, Stat]:
    """The recipes of sub-sweep ``sub`` and their runs' numbers (runs looked up by id in ``root``)."""
    by_recipe: dict[str, list] = {}
    for r in sweep.expand(f"{SPEC}:{sub}", root):
        by_recipe.setdefault(r.overrides["recipe"], []).append(load.read_run(root, r.id, r.overrides))
    out = {}
    for name, runs in by_recipe.items():
        sums = [summary.summarize(r) for r in runs]
        bad = [s for s in sums if s.divergence]
        done = {s.run.value("seed"): s.final_val for s in sums
                if s.run.status == "done" and not s.divergence and math.isfinite(s.final_val)}
        devices = sorted({d for r in runs for d in markdown.devices_named(r.log_text)})
        out[name] = Stat(name, len(runs), len(done) + len(bad), bool(bad), done, tuple(devices))
    return out


def check(stats: dict[str, Stat], comparisons: list[tuple[str, str, str]]) -> tuple[str, str]:
    """(outcome, evidence) of one claim."""
    evidence, holds, clear = [], [], []
    missing = [s for a, _, b in comparisons for s in (stats[a], stats[b]) if s.finished < s.runs]
    for a, op, b in comparisons:
        x, y = stats[a], stats[b]
        gap = y.key - x.key
        if op == LT:
            holds.append(gap > 0)
            pair = paired.paired({**{(a, k): v for k, v in x.by_seed.items()},
                                  **{(b, k): v for k, v in y.by_seed.items()}}, b, a)
            diffs = list(pair.by_seed.values())
            clear.append(not math.isfinite(gap) or (len(diffs) > 1 and all((d > 0) == (gap > 0) for d in diffs)))
            text = "" if not math.isfinite(gap) else f"; {b} − {a} = {gap:+.4f}"
            if len(diffs) > 1:
                lo, hi = pair.range
                text += (" (per seed " + ", ".join(f"{d:+.4f}" for d in diffs)
                         + f"; paired mean {pair.mean:+.4f}, range [{lo:+.4f}, {hi:+.4f}])")
            common = list(pair.by_seed)
            if diffs and math.isfinite(gap) and set(x.by_seed) != set(y.by_seed):  # means of other seeds
                text += (f" (seed{'s' if len(common) > 1 else ''} {', '.join(map(str, common))} alone: "
                         f"{pair.mean:+.4f})")
        else:
            spread = max(x.half, y.half)
            holds.append(abs(gap) <= spread)
            clear.append(True)
            text = f"; means {abs(gap):.4f} apart, seeds' half-range {spread:.4f}" if math.isfinite(gap) else ""
        if x.devices and y.devices and x.devices != y.devices:  # a rerun on other hardware differs by itself
            text += f" (on different GPUs: {a} {', '.join(x.devices)}; {b} {', '.join(y.devices)})"
        evidence.append(f"{a} {x.cell()} vs {b} {y.cell()}{text}")
    if missing:
        names = sorted({s.name for s in missing})
        return f"incomplete ({', '.join(names)} not finished)", " · ".join(evidence)
    if all(holds):
        return "reproduced" + ("" if all(clear) else " (mixed across seeds)"), " · ".join(evidence)
    reversed_clear = all(c for h, c in zip(holds, clear) if not h)
    return "not reproduced" + ("" if reversed_clear else " (mixed across seeds)"), " · ".join(evidence)


def write(root: str, out: str, figures: bool = False) -> list[dict]:
    """Writes report.md and claims.csv (and the sub-sweep reports with ``figures``); the claims' rows."""
    os.makedirs(out, exist_ok=True)
    stats = {sub: settings(root, sub) for sub in SUBSWEEPS}
    rows = [{"sweep": sub, "claim": text, **dict(zip(("outcome", "evidence"), check(stats[sub], comps)))}
            for sub, text, comps in CLAIMS]
    with open(os.path.join(out, "claims.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    linked = set()
    if figures:
        for sub in SUBSWEEPS:
            ids = [r.id for r in sweep.expand(f"{SPEC}:{sub}", root)]
            if any(os.path.isdir(os.path.join(root, i)) for i in ids):
                sweep_report.build(root, out=os.path.join(out, sub), only="^(" + "|".join(ids) + ")$",
                                   command=f"python -m experiments.fp4_ablation_report {root} --figures")
                linked.add(sub)
    md = ["# FP4 ablations: the paper's claims, checked against the runs", "",
          f"From the runs under `{root}` (`configs/fp4_ablation.py`). {METHOD}",
          "", "| sub-sweep | the paper's claim | here | evidence |", "|---|---|---|---|"]
    md += [f"| {r['sweep']} | {r['claim']} | **{r['outcome']}** | {r['evidence']} |" for r in rows]
    for sub, title in SUBSWEEPS.items():
        link = f" ([report]({sub}/report.md))" if sub in linked else ""
        md += ["", f"## ({sub}) {title}{link}", "", "| recipe | runs finished | final val loss | per seed |", "|---|---|---|---|"]
        md += [f"| {s.name} | {s.finished} of {s.runs} | {s.cell()} | {', '.join(f'{v:.4f}' for v in s.values) or '-'} |"
               for s in stats[sub].values()]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the sweep root (runs/fp4_ablation)")
    parser.add_argument("--out", default="", help="where report.md and claims.csv go (default: the root)")
    parser.add_argument("--figures", action="store_true", help="also each sub-sweep's full report, in <out>/<sub-sweep>/")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        parser.error(f"sweep root {args.root!r} is not a directory")
    for r in write(args.root, args.out or args.root, args.figures):
        print(f"({r['sweep']}) {r['claim']}: {r['outcome']}")
    print(f"wrote {os.path.join(args.out or args.root, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
