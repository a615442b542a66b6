"""Where the time of a quantized layer goes: GPU kernels of forward+backward, from a profiler trace.

    python -m experiments.profile_gemm --recipes "bf16|fp8" --out /tmp/profile   # on a GPU

For each (shape, recipe) of ``experiments.benchmark_gemm`` this traces a few jitted steps with
``jax.profiler`` (perfetto trace), sums the device time of every kernel per step, and prints
the heaviest kernels; the optimized HLO of each case is written beside the summary JSON.
"""

from __future__ import annotations

import argparse
import os

import jax

from experiments.benchmark_gemm import RECIPES, SHAPES, layer_step
from experiments.common import environment, kernel_categories, kernel_times, time_fn, write_json



def profile(label: str, shape_name: str, out: str, steps: int) -> dict:
    tokens, d_in, d_out = SHAPES[shape_name]
    step, args = layer_step(RECIPES[label], tokens, d_in, d_out)
    step = step.lower(*args).compile()  # once: timed, traced and written out
    seconds = time_fn(step, *args, repeats=10)
    tag = f"{shape_name}_{label}".replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
    hlo = step.as_text()
    with open(os.path.join(out, f"{tag}.hlo.txt"), "w") as f:
        f.write(hlo)
    trace_dir = os.path.join(out, "trace", tag)
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(steps):
            jax.block_until_ready(step(*args))
    kernels = kernel_times(trace_dir, steps)
    return {"shape": shape_name, "recipe": label, "step_s": seconds, "kernel_s": sum(kernels.values()),
            "categories": kernel_categories(kernels, hlo), "kernels": kernels}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="bf16|fp8", help=f"labels separated by '|', among: {' | '.join(RECIPES)}")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", default="/tmp/profile_gemm")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    labels = [r.strip() for r in args.recipes.split("|")]
    unknown = [r for r in labels if r not in RECIPES] + [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown recipes/shapes {unknown}; recipes: {list(RECIPES)}; shapes: {list(SHAPES)}")
    rows = [profile(label, shape, args.out, args.steps) for shape in args.shapes.split(",") for label in labels]
    write_json(os.path.join(args.out, "profile.json"), {"environment": environment(), "results": rows})
    for r in rows:
        print(f"\n{r['shape']} {r['recipe']}: step {r['step_s'] * 1e3:.3f} ms, kernels {r['kernel_s'] * 1e3:.3f} ms "
              "(" + ", ".join(f"{k} {v * 1e3:.3f}" for k, v in r["categories"].items() if v) + ")")
        for name, s in list(r["kernels"].items())[:args.top]:
            print(f"  {s * 1e3:8.3f} ms  {name[:110]}")


if __name__ == "__main__":
    main()
