"""The FP4 paper's Table 1 on a trained model: how faithfully FP4 activations survive OCC.

    python -m experiments.occ_table --run runs/fp4_ablation/<a bf16 run> --out occ_table.json

Loads the run's checkpoint, runs held-out batches through it, and quantizes every linear
layer's input activation (E2M1 per token, power-of-two scales, as the FP4 recipe does) with
no clamping, clamping at alpha = 0.999, and clamping + compensation at alpha = 0.999 / 0.99 /
0.97. Each setting's cosine similarity, MSE and SNR of the quantized activation against the
original come from the quantized GEMM's own telemetry, averaged over layers and batches, and
are printed beside the paper's numbers (its MSE is on its own activations' scale; compare the
orderings and the SNR).
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import jax
import numpy as np

from lowprec import data as lpdata
from lowprec.ops import Recipe
from lowprec.quant import Quantizer
from lowprec.quant.occ import OCC
from lowprec.train import loop, restore
from lowprec.train.telemetry import flatten, make_telemetry_fn

# (label, alpha or None, compensate) and the paper's Table 1: cosine similarity (%), MSE, SNR (dB).
SETTINGS = (("no clamp", None, False), ("clamp, alpha=0.999", 0.999, False),
            ("clamp+comp, alpha=0.999", 0.999, True), ("clamp+comp, alpha=0.99", 0.99, True),
            ("clamp+comp, alpha=0.97", 0.97, True))
PAPER = {"no clamp": (92.19, 0.1055, 8.31), "clamp, alpha=0.999": (98.83, 0.0366, 14.25),
         "clamp+comp, alpha=0.999": (99.61, 0.0245, 15.31), "clamp+comp, alpha=0.99": (100.0, 0.0099, 18.38),
         "clamp+comp, alpha=0.97": (100.0, 0.0068, 20.88)}


def activation_recipe(alpha, compensate: bool) -> Recipe:
    occ = None if alpha is None else OCC(alpha=alpha, compensate=compensate)
    return Recipe(fwd_act=Quantizer("e2m1fn", "token", scale="pow2_ceil", occ=occ), compute_dtype="bfloat16")


def held_out_batches(run, n: int):
    cfg = run.cfg
    _, val = loop.load_corpus(cfg).split()  # the run's own held-out text (include / exclude as trained)
    evals = lpdata.EvalBatches(val, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size, max_batches=n,
                               mesh=run.mesh)
    return [evals.global_batch(i, run.mesh)[0] for i in range(min(n, len(evals)))]


def measure(run, batches) -> list[dict]:
    rows = []
    for label, alpha, compensate in SETTINGS:
        rules = [("lm_head", "bf16"), (".*", activation_recipe(alpha, compensate))]
        fn = make_telemetry_fn(run.mcfg, rules, run.cfg.seed)
        by_stat, by_layer = collections.defaultdict(list), collections.defaultdict(list)
        for tokens in batches:
            stats = flatten(*jax.device_get(fn(run.params, tokens)))
            for name, value in stats.items():
                layer, role, stat = name.rsplit("/", 2)
                if role == "fwd_act":
                    by_stat[stat].append(value)
                    if stat == "sqnr_db":
                        by_layer[layer.split("[")[0]].append(value)
        paper = PAPER[label]
        rows.append({"setting": label, "cosine_pct": 100 * float(np.mean(by_stat["cosine"])),
                     "mse": float(np.mean(by_stat["mse"])), "snr_db": float(np.mean(by_stat["sqnr_db"])),
                     "clamped_frac": float(np.mean(by_stat["clamped"])),
                     "kurtosis": float(np.mean(by_stat["kurtosis"])),
                     "snr_db_by_layer": {k: float(np.mean(v)) for k, v in sorted(by_layer.items())},
                     "paper": {"cosine_pct": paper[0], "mse": paper[1], "snr_db": paper[2]}})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained run directory (its latest checkpoint is used)")
    parser.add_argument("--batches", type=int, default=4, help="held-out batches to average over")
    parser.add_argument("--out", default="", help="JSON output path")
    args = parser.parse_args(argv)
    from experiments.common import environment

    run = restore.load_run(args.run)
    rows = measure(run, held_out_batches(run, args.batches))
    print(f"FP4 (E2M1, per token) activations of {args.run} at step {run.step}; mean over layers and "
          f"{args.batches} held-out batches (paper's Table 1 in brackets)")
    print(f"{'setting':26s} {'cosine %':>16s} {'MSE':>18s} {'SNR dB':>14s} {'clamped':>8s}")
    for r in rows:
        p = r["paper"]
        print(f"{r['setting']:26s} {r['cosine_pct']:7.2f} [{p['cosine_pct']:6.2f}] {r['mse']:9.5f} [{p['mse']:6.4f}] "
              f"{r['snr_db']:6.2f} [{p['snr_db']:5.2f}] {r['clamped_frac']:8.4f}")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "run": args.run, "step": run.step, "batches": args.batches,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
