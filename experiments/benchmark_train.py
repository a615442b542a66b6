"""Training throughput per recipe, measured in one run: tokens/s, step time, MFU, ratios to bf16.

    python -m experiments.benchmark_train                       # 125m and 1b on a GPU
    python -m experiments.benchmark_train --sizes tiny --batch 4 --seq 64 --steps 3   # CPU check

Each (size, recipe) builds the model of configs/lm.py with that recipe, runs the real jitted
train step (AdamW, fp32 params, bf16 compute) on random tokens, and reports the median step,
the step's peak device memory (XLA's memory analysis; on a GPU also the allocator's counters)
and its GEMMs' kinds and operand dtypes from the compiled HLO.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import logging
import os
import re

import jax
import jax.numpy as jnp

from configs import lm
from experiments.common import (device_memory, environment, gemm_report, hlo_copies, hlo_instructions,
                                kernel_categories, kernel_times, memory_report, time_fn, write_json)
from lowprec.ops import cast_transpose, recipes
from lowprec.train import loop, sharding
from lowprec.train.progress import model_flops_per_token, peak_flops
from lowprec.train.step import TrainState, make_loss_fn, make_train_step, split_histories


def measure(size: str, recipe: str, args) -> dict:
    before = device_memory()
    cfg = lm.get_config(f"{size},{recipe}")
    cfg.data.batch_size, cfg.data.seq_len = args.batch, args.seq
    cfg.model.remat, cfg.model.attention = args.remat, args.attention
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    mcfg, policy, graphdef, params, rest, _ = loop.build_model(cfg, mesh)
    amax, rest = split_histories(rest)
    tx, _ = loop.make_optimizer(cfg, policy)
    state = sharding.onto_mesh(TrainState(jnp.zeros((), jnp.int32), params, jax.jit(tx.init)(params), amax), mesh)
    step = jax.jit(make_train_step(make_loss_fn(graphdef, rest, jax.random.key(0)), tx, 1, False),
                   donate_argnums=0)
    tokens = jax.random.randint(jax.random.key(1), (args.batch, args.seq + 1), 0, mcfg.vocab_size, jnp.int32)
    compiled = step.lower(state, tokens).compile()
    holder = {"state": state}

    def run(t):
        holder["state"], m = compiled(holder["state"], t)
        return m["loss"]

    seconds = time_fn(run, tokens, warmup=2, repeats=args.steps)
    memory = memory_report(compiled, before)
    path = gemm_report(compiled.as_text())
    del path["gemms"]  # hundreds in a model: the counts per kind and dtypes say it
    kernels = None
    if args.profile:
        trace_dir = os.path.join(args.profile, f"{size}_{recipe}")
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(3):
                jax.block_until_ready(run(tokens))
        every = kernel_times(trace_dir, 3)
        kernels = dict(list(every.items())[:40])
        hlo_text = compiled.as_text()
        categories = kernel_categories(every, hlo_text)
        ops = hlo_instructions(hlo_text)
        kernel_ops = {name: ops.get(name.replace(".", "_"), ("", ""))[1] for name in kernels}
        copies = hlo_copies(hlo_text)
        tag = re.sub(r"[^\w.-]+", "_", recipe).strip("_")  # a file name from e.g. "fp8(fp8_transposes='pallas')"
        hlo_path = f"{os.path.splitext(args.out)[0]}_{size}_{tag}.hlo.txt.gz"
        os.makedirs(os.path.dirname(hlo_path) or ".", exist_ok=True)
        with gzip.open(hlo_path, "wt") as f:  # to attribute kernels offline (memcpy, fusions)
            f.write(hlo_text)
    flops = model_flops_per_token(mcfg, args.seq) * args.batch * args.seq
    peak = peak_flops(jax.devices()[0])
    out = {"size": size, "recipe": recipe, "params_M": mcfg.num_params() / 1e6, "step_s": seconds,
           "tokens_per_s": args.batch * args.seq / seconds, "mfu": flops / seconds / peak if peak else None,
           "memory": memory, "fp8_transposes": cast_transpose.resolve_transposes(recipes.get(recipe).fp8_transposes),
           **path}
    if kernels is not None:
        out["kernels_s"], out["kernel_categories_s"], out["kernel_ops"] = kernels, categories, kernel_ops
        out["hlo"] = os.path.basename(hlo_path)
        out["hlo_copies"] = {"bytes": sum(c["bytes"] for c in copies),
                             "of_broadcasts": sum(c["bytes"] for c in copies if "broadcast" in c["operand"]),
                             "largest": copies[:20]}
    del holder, state, params
    gc.collect()
    return out


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="125m,1b")
    parser.add_argument("--recipes", default="bf16,fp8,fp4_paper")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--attention", default="", help='"", "xla" or "cudnn"')
    parser.add_argument("--profile", default="", help="also trace 3 steps into this directory; kernel times (and "
                        "each kernel's HLO op) go to the JSON, each step's compiled HLO beside it (.hlo.txt.gz)")
    parser.add_argument("--out", default="experiments/results/benchmarks/train.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows, env = [], environment()
    for size in args.sizes.split(","):
        base = None
        for recipe in args.recipes.split(","):
            try:
                r = measure(size, recipe, args)
            except Exception as e:  # noqa: BLE001 - one recipe failing (a kernel the device rejects) spares the rest
                if base is None:
                    raise
                print(f"{size:5s} {recipe:10s} failed: {type(e).__name__}: {str(e)[:400]}", flush=True)
                r = {"size": size, "recipe": recipe, "error": f"{type(e).__name__}: {e}"}
                gc.collect()
            else:
                base = base or r
                r["step_vs_bf16"] = r["step_s"] / base["step_s"]
                r["memory_vs_bf16"] = r["memory"]["peak_bytes"] / base["memory"]["peak_bytes"]
                _print_row(r)
            rows.append(r)
            write_json(args.out, {"environment": env, "settings": vars(args), "results": rows})  # after each row


def _print_row(r: dict) -> None:
    print(f"{r['size']:5s} {r['recipe']:10s} {r['params_M']:7.1f}M  step {r['step_s'] * 1e3:8.1f} ms  "
          f"{r['tokens_per_s']:10.0f} tok/s  MFU {_pct(r['mfu'])}  x bf16 {r['step_vs_bf16']:.2f}  "
          f"peak {r['memory']['peak_bytes'] / 2 ** 20:.1f} MiB (x bf16 {r['memory_vs_bf16']:.2f})  "
          f"FP8 GEMMs {r['fp8_gemms']}", flush=True)
    if "kernel_categories_s" in r:
        print("      kernels per step: " + ", ".join(
            f"{k} {v * 1e3:.1f} ms" for k, v in r["kernel_categories_s"].items()), flush=True)
        c = r["hlo_copies"]
        print(f"      HLO copies: {c['bytes'] / 2 ** 30:.2f} GiB ({c['of_broadcasts'] / 2 ** 30:.2f} GiB "
              "of broadcast constants)", flush=True)


if __name__ == "__main__":
    main()
