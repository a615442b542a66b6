"""Forward + backward time of a QuantDense layer per recipe, as ratios to bf16, in one run.

    python -m experiments.benchmark_gemm            # 8192x8192x8192 and 16384 tokens x 4096 -> 4096 (GPU)
    python -m experiments.benchmark_gemm --small    # tiny shapes: a check that runs on a CPU in seconds

Each case runs y = x @ W and both backward GEMMs (dx, dW) of one bf16 layer (no bias) under
jit with random data; the time is the median of --repeats after warm-up. The compiled HLO of
every case is read for its GEMMs: on an H100 the fp8 recipe must show three cuBLASLt FP8 GEMMs
(``__cublas$lt$matmul$f8``). The exact and approximate OCC quantiles are also timed alone.
Targets (issue 3, H100): fp8 >= 1.4x faster than bf16; fp4_paper with the approximate
quantile <= 1.3x the bf16 time.
"""

from __future__ import annotations

import argparse
import logging
import re
import time

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.common import environment, time_fn, write_json
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


def gemm_report(compiled) -> dict:
    """The GEMMs of the compiled step: kinds, operand dtypes, and the FP8 verdict."""
    gemms = ops.parse_gemms(compiled.as_text())
    fp8 = sum(kind == ops.FP8_TARGET for kind, _ in gemms)
    return {"fp8_path": "native" if fp8 else "simulated", "fp8_gemms": fp8,
            "gemms": [{"kind": k, "operands": list(d)} for k, d in gemms]}


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
            t0 = time.perf_counter()
            step, args = layer_step(recipe, tokens, d_in, d_out)
            compiled = step.lower(*args).compile()  # once: timed and read for its GEMMs
            t1 = time.perf_counter()
            seconds = time_fn(compiled, *args, repeats=repeats)
            print(f"{name} {label}: {seconds * 1e3:.3f} ms (set up and compiled in {t1 - t0:.1f} s, timed in "
                  f"{time.perf_counter() - t1:.1f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - one case failing (e.g. a kernel this device rejects) spares the rest
            if i == 0:
                raise
            print(f"{name} {label}: failed: {type(e).__name__}: {str(e)[:400]}", flush=True)
            rows.append({"shape": name, "recipe": label, "recipe_line": str(recipe),
                         "error": f"{type(e).__name__}: {e}"})
            continue
        rows.append({"shape": name, "recipe": label, "recipe_line": str(recipe or "nnx.Linear"), "seconds": seconds,
                     "tflops": flops / seconds / 1e12, "fp8_transposes": transposes_ran(recipe),
                     **gemm_report(compiled)})
    base = rows[0]["seconds"]
    for row in rows:
        if "error" in row:
            continue
        row["time_vs_bf16"] = row["seconds"] / base
        row["speedup_vs_bf16"] = base / row["seconds"]
    return rows


def verdict(row: dict) -> str:
    if row["recipe"].startswith("fp8"):
        return f"target >= {FP8_SPEEDUP_TARGET}x: {'met' if row['speedup_vs_bf16'] >= FP8_SPEEDUP_TARGET else 'missed'}"
    if row["recipe"] == "fp4_paper (approx quantile)":
        met = row["time_vs_bf16"] <= FP4_SLOWDOWN_TARGET
        return f"target <= {FP4_SLOWDOWN_TARGET}x time: {'met' if met else 'missed'}"
    return ""


def print_table(rows: list[dict], quantiles: dict, device: str) -> None:
    print(f"\nQuantDense forward+backward on {device} (median ms; GEMM path from the compiled HLO)")
    print(f"{'shape':18s} {'recipe':40s} {'ms':>9s} {'TFLOP/s':>8s} {'x bf16':>7s} {'FP8 GEMMs':>9s}  note")
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:18s} {r['recipe']:40s} failed: {r['error'][:80]}")
            continue
        print(f"{r['shape']:18s} {r['recipe']:40s} {r['seconds'] * 1e3:9.3f} {r['tflops']:8.1f} "
              f"{r['time_vs_bf16']:7.2f} {r['fp8_gemms']:9d}  {verdict(r)}")
    print("OCC quantile alone: " + ", ".join(f"{q} {t * 1e3:.3f} ms" for q, t in quantiles.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes (a CPU check in seconds)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 20; 3 with --small)")
    parser.add_argument("--recipes", default=None,
                        help=f"regex: only the recipes whose label matches (bf16, the baseline, always runs); "
                             f"labels: {'; '.join(RECIPES)}")
    parser.add_argument("--shapes", default=None, help="regex: only the shapes whose name matches; names: "
                        + "; ".join(SHAPES))
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
    rows = [row for name, shape in shapes.items() for row in run_shape(name, shape, repeats, labels)]
    tokens, d_in, _ = list(shapes.values())[-1]
    quantiles = time_quantiles(tokens, d_in, repeats)
    write_json(args.out, {"environment": env, "shapes": {k: list(v) for k, v in shapes.items()},
                          "repeats": repeats, "results": rows,
                          "occ_quantile_seconds": {"shape": [tokens, d_in], **quantiles},
                          "targets": {"fp8_speedup_min": FP8_SPEEDUP_TARGET,
                                      "fp4_paper_time_max": FP4_SLOWDOWN_TARGET}})
    print(f"wrote {args.out}")
    print_table(rows, quantiles, env["device"])


if __name__ == "__main__":
    main()
