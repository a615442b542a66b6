"""Forward + backward time and memory of a QuantDense layer per recipe, as ratios to bf16, in one run.

    python -m experiments.benchmark_gemm            # 8192x8192x8192 and 16384 tokens x 4096 -> 4096 (GPU)
    python -m experiments.benchmark_gemm --small    # tiny shapes: a check that runs on a CPU in seconds

Each case runs y = x @ W and both backward GEMMs (dx, dW) of one bf16 layer (no bias) under
jit with random data; the time is the median of --repeats after warm-up. The compiled HLO of
every case is read for its GEMMs: on an H100 the fp8 recipe must show three cuBLASLt FP8 GEMMs
(``__cublas$lt$matmul$f8``). The exact and approximate OCC quantiles are also timed alone.
Targets (issue 3, H100): fp8 >= 1.4x faster than bf16; fp4_paper with the approximate
quantile <= 1.3x the bf16 time; no fp8 or fp4 recipe above bf16's peak memory.

Every row records its peak device memory per step (XLA's buffer assignment of the compiled step;
on a GPU also the allocator's counters) and its GEMMs' kinds and operand dtypes from the HLO.
``--torch`` adds peers on the same device and shapes (experiments/torch_peer.py): torch
nn.Linear bf16 and torchao float8 training (tensorwise, rowwise) under torch.compile, timed with
CUDA events, and a summary of lowprec fp8 against torchao's best float8 per shape. On a GPU
machine without network, install torchao and lowprec's dependencies from the wheels in .whl/
(only those the image lacks), then run:

    for w in .whl/*.whl; do python3 -m pip show -q "$(basename "$w" | cut -d- -f1)" 2>/dev/null || echo "$w"; done \
      | xargs -r python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site
    export PYTHONPATH=/tmp/site
    python3 -m experiments.benchmark_gemm --torch --out OUT/gemm.json
"""

from __future__ import annotations

import argparse
import logging
import re
import time

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import torch_peer
from experiments.common import device_memory, environment, gemm_report, memory_report, time_fn, write_json
from lowprec import nn, ops
from lowprec.ops import recipes
from lowprec.quant import occ

SHAPES = {"8192x8192x8192": (8192, 8192, 8192), "16384x4096->4096": (16384, 4096, 4096)}
SMALL_SHAPES = {"256x256x256": (256, 256, 256), "512x128->128": (512, 128, 128)}
RECIPES = {  # the first is the baseline of the ratios; None is plain nnx.Linear (a check on QuantDense's own cost)
    "bf16": recipes.bf16,
    "nnx.Linear bf16 (reference)": None,
    "fp8": recipes.fp8,  # fp8_transposes="auto": the Pallas cast-transpose on one GPU (the row records which ran)
    "fp8 (XLA transposes)": recipes.fp8.replace(fp8_transposes="fused", name="fp8_fused_transposes"),
    "fp8 (separate transposes)": recipes.fp8.replace(fp8_transposes="separate", name="fp8_separate_transposes"),
    "fp8 (pallas cast-transpose)": recipes.fp8_pallas,
    "fp8 (delayed scaling)": recipes.fp8_delayed,
    "fp8 (delayed scaling, pallas cast-transpose)": recipes.get("fp8_delayed(fp8_transposes='pallas')"),
    "fp4_paper (approx quantile)": recipes.fp4(dge_k=5, occ_alpha=0.99, quantile="approx", name="fp4_paper_approx"),
    "fp4_paper (exact quantile)": recipes.fp4_paper,
    "fp4_paper (approx, fused compensation)": recipes.fp4(dge_k=5, occ_alpha=0.99, quantile="approx",
                                                          compensation="fused", name="fp4_paper_approx_fused"),
}
# lowprec's rowwise-scaled FP8, torchao rowwise's peer, once the library registers one
ROWWISE = "fp8 (rowwise scaling)"
if "fp8_rowwise" in recipes.names():
    RECIPES[ROWWISE] = recipes.get("fp8_rowwise")
FP8_SPEEDUP_TARGET, FP4_SLOWDOWN_TARGET = 1.4, 1.3


def make_layer(recipe, d_in: int, d_out: int) -> nnx.Module:
    """A bf16 layer without bias: QuantDense with ``recipe``, or nnx.Linear for recipe None."""
    kwargs = dict(use_bias=False, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    if recipe is None:
        return nnx.Linear(d_in, d_out, **kwargs)
    return nn.QuantDense(d_in, d_out, recipe=recipe, **kwargs)


def layer_step(recipe, tokens: int, d_in: int, d_out: int):
    """(jitted forward+backward of one layer, its random bf16 arguments)."""
    graphdef, state = nnx.split(make_layer(recipe, d_in, d_out))
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (tokens, d_in), jnp.bfloat16)
    dy = jax.random.normal(ky, (tokens, d_out), jnp.bfloat16)

    @jax.jit
    def step(state, x, dy):
        y, vjp = jax.vjp(lambda s, v: nnx.merge(graphdef, s)(v), state, x)
        return y, vjp(dy)

    return step, (state, x, dy)


def transposes_ran(recipe) -> str | None:
    """The recipe's ``fp8_transposes`` with ``"auto"`` resolved on this machine."""
    return None if recipe is None else ops.cast_transpose.resolve_transposes(recipe.fp8_transposes)


def time_quantiles(tokens: int, d: int, repeats: int) -> dict:
    """Seconds for OCC's bounds of a (tokens, d) bf16 activation, exact vs approximate."""
    x = jax.random.t(jax.random.key(2), 3.0, (tokens, d), jnp.float32).astype(jnp.bfloat16)
    return {q: time_fn(jax.jit(lambda v, q=q: occ.bounds(v, occ.OCC(alpha=0.99, quantile=q))), x, repeats=repeats)
            for q in occ.QUANTILES}


def run_shape(name: str, shape, repeats: int, labels: list[str] | None = None) -> list[dict]:
    """One row per recipe label (default: all; the first, bf16, is the baseline of the ratios)."""
    tokens, d_in, d_out = shape
    flops = 3 * 2 * tokens * d_in * d_out
    rows = []
    for i, label in enumerate(labels or list(RECIPES)):
        recipe = RECIPES[label]
        try:
            before = device_memory()
            t0 = time.perf_counter()
            step, args = layer_step(recipe, tokens, d_in, d_out)
            compiled = step.lower(*args).compile()  # once: timed and read for its GEMMs
            t1 = time.perf_counter()
            seconds = time_fn(compiled, *args, repeats=repeats)
            memory = memory_report(compiled, before)
            print(f"{name} {label}: {seconds * 1e3:.3f} ms (set up and compiled in {t1 - t0:.1f} s, timed in "
                  f"{time.perf_counter() - t1:.1f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - one case failing (e.g. a kernel this device rejects) spares the rest
            if i == 0:
                raise
            print(f"{name} {label}: failed: {type(e).__name__}: {str(e)[:400]}", flush=True)
            rows.append({"shape": name, "recipe": label, "framework": "lowprec", "recipe_line": str(recipe),
                         "error": f"{type(e).__name__}: {e}"})
            continue
        rows.append({"shape": name, "recipe": label, "framework": "lowprec", "baseline": "bf16",
                     "recipe_line": str(recipe or "nnx.Linear"), "seconds": seconds, "tflops": flops / seconds / 1e12,
                     "fp8_transposes": transposes_ran(recipe), "memory": memory, **gemm_report(compiled.as_text())})
    base, base_bytes = rows[0]["seconds"], rows[0]["memory"]["peak_bytes"]
    for row in rows:
        if "error" in row:
            continue
        row["time_vs_bf16"] = row["seconds"] / base
        row["speedup_vs_bf16"] = base / row["seconds"]
        row["memory_vs_bf16"] = row["memory"]["peak_bytes"] / base_bytes
    return rows


def _timed(rows: list[dict], label: str) -> dict | None:
    row = next((r for r in rows if r["recipe"] == label and "seconds" in r), None)
    return None if row is None else {"recipe": label, "seconds": row["seconds"]}


def _ahead(ours: dict | None, theirs: dict | None) -> dict:
    """Our time against theirs, absolute: ahead means fewer seconds."""
    if ours is None or theirs is None:
        return {"lowprec": ours, "torchao": theirs, "ahead": None}
    return {"lowprec": ours, "torchao": theirs, "ahead": ours["seconds"] < theirs["seconds"],
            "lowprec_time_vs_torchao": ours["seconds"] / theirs["seconds"]}


def peer_summary(rows: list[dict]) -> list[dict]:
    """Per shape: lowprec fp8 against torchao's faster float8 recipe, lowprec's rowwise recipe
    against torchao rowwise (if lowprec has one), both bf16 baselines, and why a torch row is missing."""
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        here = [r for r in rows if r["shape"] == shape]
        torchao = [t for t in (_timed(here, lb) for lb, rec in torch_peer.RECIPES.items() if rec) if t]
        entry = {"shape": shape, "lowprec_bf16": _timed(here, "bf16"), "torch_bf16": _timed(here, "torch bf16"),
                 "fp8_vs_torchao_best_float8": _ahead(_timed(here, "fp8"),
                                                      min(torchao, key=lambda t: t["seconds"], default=None))}
        rowwise = _ahead(_timed(here, ROWWISE), _timed(here, "torchao float8 rowwise"))
        if ROWWISE not in RECIPES:
            rowwise["note"] = "lowprec registers no rowwise-scaled FP8 recipe (fp8_rowwise): nothing to compare"
        entry["rowwise_vs_torchao_rowwise"] = rowwise
        missing = {r["recipe"]: r.get("skipped") or r.get("error") for r in here
                   if r.get("framework") == "torch" and "seconds" not in r}
        if missing:
            entry["torch_rows_missing"] = missing
        out.append(entry)
    return out


def verdict(row: dict) -> str:
    notes = []
    if row["recipe"].startswith("fp8"):
        notes.append(f"target >= {FP8_SPEEDUP_TARGET}x: "
                     f"{'met' if row['speedup_vs_bf16'] >= FP8_SPEEDUP_TARGET else 'missed'}")
    if row["recipe"] == "fp4_paper (approx quantile)":
        notes.append(f"target <= {FP4_SLOWDOWN_TARGET}x time: "
                     f"{'met' if row['time_vs_bf16'] <= FP4_SLOWDOWN_TARGET else 'missed'}")
    if row["recipe"].startswith(("fp8", "fp4")):
        notes.append(f"memory <= bf16: {'met' if row['memory_vs_bf16'] <= 1 else 'missed'}")
    return "; ".join(notes)


def _row_line(r: dict) -> str:
    head = f"{r['shape']:18s} {r['recipe']:44s}"
    if "seconds" not in r:
        return f"{head} {'skipped' if 'skipped' in r else 'failed'}: {(r.get('skipped') or r['error'])[:90]}"
    mib = r["memory"]["peak_bytes"]
    mib = f"{mib / 2 ** 20:9.1f}" if mib is not None else f"{'n/a':>9s}"
    gemms = f"{r['fp8_gemms']:9d}" if "fp8_gemms" in r else f"{'-':>9s}"
    return (f"{head} {r['seconds'] * 1e3:9.3f} {r['tflops']:8.1f} {r['time_vs_bf16']:7.2f} {mib} {gemms}  "
            f"{verdict(r) if r['framework'] == 'lowprec' else ''}")


def print_table(rows: list[dict], quantiles: dict, device: str, summary: list[dict] | None = None) -> None:
    print(f"\nQuantDense forward+backward on {device}, torch rows an nn.Linear (median ms; x bf16: against the "
          "row's own framework's bf16; peak MiB per step; GEMM path from the compiled HLO)")
    print(f"{'shape':18s} {'recipe':44s} {'ms':>9s} {'TFLOP/s':>8s} {'x bf16':>7s} {'peak MiB':>9s} {'FP8 GEMMs':>9s}"
          "  note")
    for r in rows:
        print(_row_line(r))
    print("OCC quantile alone: " + ", ".join(f"{q} {t * 1e3:.3f} ms" for q, t in quantiles.items()))
    for entry in summary or []:
        for key in ("fp8_vs_torchao_best_float8", "rowwise_vs_torchao_rowwise"):
            c = entry[key]
            told = (f"{c['lowprec']['recipe']} {c['lowprec']['seconds'] * 1e3:.3f} ms vs "
                    f"{c['torchao']['recipe']} {c['torchao']['seconds'] * 1e3:.3f} ms: "
                    f"{'ahead' if c['ahead'] else 'BEHIND'}") if c["ahead"] is not None else \
                c.get("note", "not compared: " + ", ".join(f"{k}: {v}" for k, v in
                                                           entry.get("torch_rows_missing", {}).items()))
            print(f"{entry['shape']:18s} {key}: {told}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes (a CPU check in seconds)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 20; 3 with --small)")
    parser.add_argument("--recipes", default=None,
                        help=f"regex: only the recipes whose label matches (bf16, the baseline, always runs); "
                             f"labels: {'; '.join(RECIPES)}")
    parser.add_argument("--shapes", default=None, help="regex: only the shapes whose name matches; names: "
                        + "; ".join(SHAPES))
    parser.add_argument("--torch", action="store_true",
                        help="also time the torch peers at each shape: " + "; ".join(torch_peer.RECIPES)
                        + " (torch.compile; skipped with a reason where torch, torchao or CUDA is missing)")
    parser.add_argument("--out", default="experiments/results/benchmarks/gemm.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    shapes = {k: v for k, v in (SMALL_SHAPES if args.small else SHAPES).items()
              if args.shapes is None or re.search(args.shapes, k)}
    if not shapes:
        parser.error(f"--shapes {args.shapes!r} matches no shape; shapes: {'; '.join(SMALL_SHAPES if args.small else SHAPES)}")
    repeats = args.repeats or (3 if args.small else 20)
    env = environment()
    labels = [lb for i, lb in enumerate(RECIPES) if i == 0 or args.recipes is None or re.search(args.recipes, lb)]
    if args.recipes is not None and len(labels) == 1 and not re.search(args.recipes, labels[0]):
        parser.error(f"--recipes {args.recipes!r} matches no recipe; labels: {'; '.join(RECIPES)}")
    rows = []
    for name, shape in shapes.items():
        rows += run_shape(name, shape, repeats, labels)
        if args.torch:
            rows += torch_peer.run_shape(name, shape, repeats, jax.devices()[0].platform)
    tokens, d_in, _ = list(shapes.values())[-1]
    quantiles = time_quantiles(tokens, d_in, repeats)
    summary = peer_summary(rows) if args.torch else None
    write_json(args.out, {"environment": {**env, **(torch_peer.versions() if args.torch else {})},
                          "shapes": {k: list(v) for k, v in shapes.items()}, "repeats": repeats, "results": rows,
                          **({"peer_summary": summary} if args.torch else {}),
                          "occ_quantile_seconds": {"shape": [tokens, d_in], **quantiles},
                          "targets": {"fp8_speedup_min": FP8_SPEEDUP_TARGET,
                                      "fp4_paper_time_max": FP4_SLOWDOWN_TARGET, "fp8_fp4_memory_vs_bf16_max": 1.0,
                                      "fp8_ahead_of_torchao_best_float8": True}})
    print(f"wrote {args.out}")
    print_table(rows, quantiles, env["device"], summary)


if __name__ == "__main__":
    main()
