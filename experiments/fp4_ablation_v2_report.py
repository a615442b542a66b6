"""The FP4 ablation v2 report: each hypothesis's paired (same-seed) differences and the verdict
of the decision rule fixed before the runs.

    python -m experiments.fp4_ablation_v2_report runs/fp4_ablation_v2 --out experiments/results/fp4_ablation_v2 --figures

Reads the runs of ``configs/fp4_ablation_v2.py`` (any sub-sweeps that ran; seeds trained in one
process read as separate runs) and writes into ``--out``: ``report.md`` (per comparison each
seed's difference of final validation loss, their mean, the unpaired means and the verdict),
``comparisons.csv``, and with ``--figures`` the sweep report (loss curves, final losses) in
``<out>/curves/``.

The decision rule (``RULE``): a comparison's paired differences d_s = setting − baseline per seed.
"no effect" when |d_s| < 0.02 nats for every seed; "effect" when |d_s| >= 0.03 with one sign for
every seed; else "unclear". A setting whose run diverged or failed is reported as such; one that
has not run leaves its comparisons "not run". Where a setting's runs stopped before the end, the
rule is applied to the paired losses at the last validation step that every seed of both settings
reached, and the verdict says "unfinished; at step N".
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys

from configs import fp4_ablation_v2
from experiments import paired
from experiments import report as sweep_report
from experiments.reporting import load, markdown, summary

NO_EFFECT, EFFECT = 0.02, 0.03
RULE = (f"Paired differences d_s = setting − baseline of the final validation loss (nats per byte) per "
        f"seed (same seed: same initialization and data order). **no effect**: |d_s| < {NO_EFFECT} for every "
        f"seed; **effect**: |d_s| >= {EFFECT} with one sign for every seed; otherwise **unclear**. A setting "
        f"with a diverged or failed run is named as such; one without finished runs leaves its comparisons "
        f"**not run**, or, where its runs stopped early, is compared at the last validation step every seed "
        f"of both settings reached (**unfinished; at step N**).")
LR_HIGH = fp4_ablation_v2.LR_HIGH
# (hypothesis, what it predicts, [(setting, baseline)]): a setting is (recipe, lr or None for the default).
HYPOTHESES = (
    ("DGE vs STE, weights per output channel (v1's layout)",
     "the paper: DGE below STE; v1 found DGE 0.03-0.09 above",
     [(("w4a8_wout_dge5", None), ("w4a8_wout_ste", None))]),
    ("DGE vs STE, weights per input channel (the released code's layout)",
     "if v1's gap came from the scale axis, it shrinks or flips here",
     [(("w4a8_win_dge5", None), ("w4a8_win_ste", None))]),
    ("DGE vs STE, per-tensor weights (the research branch's ablation)",
     "the authors' own setting of the DGE ablation: DGE below STE",
     [(("w4a8_wtensor_dge5", None), ("w4a8_wtensor_ste", None))]),
    ("weight-scale axis, STE", "input vs output channel: a layout choice, expected no effect",
     [(("w4a8_win_ste", None), ("w4a8_wout_ste", None)), (("w4a8_wtensor_ste", None), ("w4a8_wout_ste", None))]),
    ("f' divided by its interval mean (null test)", "AdamW cancels a constant gradient factor: no effect",
     [(("w4a8_wout_dge5_mean1", None), ("w4a8_wout_dge5", None))]),
    ("DGE vs STE at lr 3e-3", "a larger step size may let STE's noise or DGE's bias dominate",
     [(("w4a8_wout_dge5", LR_HIGH), ("w4a8_wout_ste", LR_HIGH))]),
    ("(c) W8A4 per-tensor: OCC vs direct", "the paper: direct per-tensor W8A4 diverges; OCC trains",
     [((f"w8a4_atensor_occ{a}", None), ("w8a4_atensor", None)) for a in ("999", "99", "97")]),
    ("(d) granularity, direct-cast W4A4", "the paper: per-tensor worse than vector-wise, activations most",
     [((f"w4a4_w{w}_a{a}", None), ("w4a4_wchannel_atoken", None))
      for w, a in (("tensor", "token"), ("channel", "tensor"), ("tensor", "tensor"))]),
    ("(e) activation element format", "the paper: E2M1 beats E1M2",
     [(("fp4full_ae1m2", None), ("fp4full_ae2m1", None))]),
    ("bf16 anchor", "every W4A8 setting above bf16", [(("w4a8_wout_ste", None), ("bf16", None)),
                                                     (("w4a8_wout_dge5", None), ("bf16", None))]),
)


def _key(run: load.Run, default_lr: float) -> tuple:
    lr = run.value("optim.lr")
    return run.value("recipe"), None if lr is None or math.isclose(float(lr), default_lr) else float(lr)


def collect(root: str) -> tuple[dict, dict, str, dict]:
    """({setting: {seed: final val loss}} of finished runs, {setting: "diverged"/"failed" note},
    the device line, {setting: {seed: {step: val loss}}} of every run with validation records)
    from the runs under ``root``."""
    swept = load.load(root)
    default_lr = fp4_ablation_v2.get_config().optim.lr  # a run at this rate is keyed without it
    values, bad, devices, curves = {}, {}, set(), {}
    for run in swept.runs:
        s = summary.summarize(run)
        key = _key(run, default_lr)
        seed = run.value("seed")
        curves.setdefault(key, {})[seed] = {r["step"]: r["loss"] for r in run.val if math.isfinite(r.get("loss", math.nan))}
        devices |= markdown.devices_named(run.log_text)
        if s.divergence:
            bad[key] = s.divergence
        elif run.status == "done" and math.isfinite(s.final_val):
            values.setdefault(key, {})[seed] = s.final_val
    return values, bad, "; ".join(sorted(devices)) or "not recorded", curves


def verdict(diffs: list[float]) -> str:
    if not diffs:
        return "not run"
    if all(abs(d) < NO_EFFECT for d in diffs):
        return "no effect"
    if all(abs(d) >= EFFECT for d in diffs) and len({d > 0 for d in diffs}) == 1:
        return "effect (" + ("setting higher" if diffs[0] > 0 else "setting lower") + ")"
    return "unclear"


def name(setting: tuple) -> str:
    recipe, lr = setting
    return recipe if lr is None else f"{recipe} @ lr {lr:g}"


def matched_step(curves: dict, setting: tuple, baseline: tuple) -> tuple[int | None, dict]:
    """(the last validation step that every seed of both settings reached, {(setting name, seed):
    val loss there}); (None, {}) where they share no seed or step."""
    a, b = curves.get(setting, {}), curves.get(baseline, {})
    seeds = sorted(set(a) & set(b))
    steps = set.intersection(*(set(a[s]) & set(b[s]) for s in seeds)) if seeds else set()
    if not steps:
        return None, {}
    step = max(steps)
    return step, {**{(name(setting), s): a[s][step] for s in seeds}, **{(name(baseline), s): b[s][step] for s in seeds}}


def compare(values: dict, bad: dict, setting: tuple, baseline: tuple, curves: dict | None = None) -> dict:
    """One comparison's row: the paired final losses; where a setting has no finished run, the
    paired losses at the last validation step both reached, said so in the verdict."""
    flat = {(name(k), seed): v for k, by_seed in values.items() for seed, v in by_seed.items()}
    p = paired.paired(flat, name(setting), name(baseline))
    diffs = list(p.by_seed.values())
    out = verdict(diffs)
    if not diffs and curves:
        step, at = matched_step(curves, setting, baseline)
        if step is not None:
            p = paired.paired(at, name(setting), name(baseline))
            diffs = list(p.by_seed.values())
            out = f"unfinished; at step {step}: {verdict(diffs)}"
    broken = [f"{name(k)} {bad[k]}" for k in (setting, baseline) if k in bad]
    if broken:
        out = "; ".join(broken)
    return {"setting": name(setting), "baseline": name(baseline), "verdict": out,
            "per_seed": " ".join(f"s{s}: {d:+.4f}" for s, d in p.by_seed.items()) or "-",
            "paired_mean": p.mean, "setting_mean": p.setting_mean, "baseline_mean": p.baseline_mean}


def write(root: str, out: str, figures: bool = False) -> list[dict]:
    os.makedirs(out, exist_ok=True)
    values, bad, devices, curves = collect(root)
    rows = [{"hypothesis": h, "prediction": pred, **compare(values, bad, s, b, curves)} for h, pred, pairs in HYPOTHESES
            for s, b in pairs]
    with open(os.path.join(out, "comparisons.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: "-" if not math.isfinite(v) else f"{v:.4f}"  # noqa: E731
    md = ["# FP4 ablations v2: paired comparisons", "",
          f"From the runs under `{root}` (`configs/fp4_ablation_v2.py`); devices: {devices}.", "", RULE, "",
          "| hypothesis | prediction | setting − baseline | per seed | paired mean | unpaired means | verdict |",
          "|---|---|---|---|---:|---|---|"]
    for r in rows:
        md.append(f"| {r['hypothesis']} | {r['prediction']} | {r['setting']} − {r['baseline']} | {r['per_seed']} | "
                  f"{fmt(r['paired_mean'])} | {fmt(r['setting_mean'])} vs {fmt(r['baseline_mean'])} | "
                  f"**{r['verdict']}** |")
    md += ["", "## Final validation loss per setting and seed", "", "| setting | seeds | per seed |", "|---|---:|---|"]
    for k in sorted(values, key=name):
        md.append(f"| {name(k)} | {len(values[k])} | " + ", ".join(f"s{s}: {v:.4f}" for s, v in sorted(values[k].items()))
                  + " |")
    if figures and values:
        sweep_report.build(root, out=os.path.join(out, "curves"),
                           command=f"python -m experiments.fp4_ablation_v2_report {root} --figures")
        md += ["", "Loss curves and the full sweep report: [curves/report.md](curves/report.md)."]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the sweep root (runs/fp4_ablation_v2)")
    parser.add_argument("--out", default="", help="where report.md and comparisons.csv go (default: the root)")
    parser.add_argument("--figures", action="store_true", help="also the sweep report with loss curves, in <out>/curves/")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        parser.error(f"sweep root {args.root!r} is not a directory")
    for r in write(args.root, args.out or args.root, args.figures):
        print(f"{r['setting']} − {r['baseline']}: {r['verdict']} ({r['per_seed']})")
    print(f"wrote {os.path.join(args.out or args.root, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
