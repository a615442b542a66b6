"""Runs per minute: K seeds as K separate training processes vs one process with
``train.seeds_per_process=K`` (the seeds a vmapped axis), and how close their losses are.

    python -m experiments.benchmark_seeds                                   # 20m, 4 seeds, on a GPU
    python -m experiments.benchmark_seeds --size tiny --batch 2 --seq 32 --steps 100 --seeds 2   # CPU

Each run is ``python -m experiments.train`` in its own process (start-up, compilation,
validation and checkpoints included, as a sweep runs it), one after another (``--parallel``:
the K separate processes at once on the same device). Reported: wall seconds of each, runs per
minute of each way and their ratio; the steady-state step time (median of the runs' train
records, ``log_every=1``) of one seed alone and of the group, and K x alone / group; and, per
seed, the largest |loss difference| between its run alone and its run in the group over every
step. ``--json`` writes all of it with the device, date and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from experiments.common import environment, write_json
from lowprec.train.rundir import read_metrics


def train_command(args, workdir: str, seed: int, seeds_per_process: int) -> list[str]:
    """The experiments.train argv of one process: seed ``seed`` (and the next ones)."""
    overrides = {"seed": seed, "mesh.devices": 1, "data.source": args.source, "data.batch_size": args.batch,
                 "data.seq_len": args.seq, "train.steps": args.steps, "train.log_every": 1,
                 "train.eval_every": args.steps, "train.checkpoint_every": args.steps, "train.progress": False,
                 "optim.warmup_steps": min(args.steps // 10, 200), "train.seeds_per_process": seeds_per_process}
    return [sys.executable, "-m", "experiments.train", "--config", f"configs/lm.py:{args.size},{args.recipe}",
            "--workdir", workdir] + [f"--config.{k}={v}" for k, v in overrides.items()]


def run_all(commands: list[list[str]], parallel: bool) -> float:
    """Wall seconds to run ``commands`` (one after another, or all at once); raises if one fails."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"} if parallel else dict(os.environ)
    t0 = time.perf_counter()
    if parallel:
        procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
        outs = [(p, p.communicate()[1]) for p in procs]
    else:
        outs = []
        for c in commands:
            p = subprocess.run(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            outs.append((p, p.stderr))
    for p, err in outs:
        if p.returncode != 0:
            raise RuntimeError(f"training failed (exit {p.returncode}): {err.decode()[-2000:]}")
    return time.perf_counter() - t0


def train_records(workdir: str) -> list[dict]:
    return [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]


def median_step(records: list[dict]) -> float:
    """The median step time over the records after the first two (compilation, warm-up)."""
    return statistics.median(r["step_time_s"] for r in records[2:] or records)


def measure(args, root: str) -> dict:
    seeds = list(range(args.seeds))
    alone = {s: os.path.join(root, f"alone-{s}") for s in seeds}
    group = os.path.join(root, "group")
    t_alone = run_all([train_command(args, alone[s], s, 1) for s in seeds], args.parallel)
    t_group = run_all([train_command(args, group, 0, args.seeds)], False)
    rec_alone = {s: train_records(alone[s]) for s in seeds}
    rec_group = {s: train_records(os.path.join(group, f"seed-{s}")) for s in seeds}
    loss_diff = {}
    for s in seeds:
        a, b = rec_alone[s], rec_group[s]
        if [r["step"] for r in a] != [r["step"] for r in b]:
            raise RuntimeError(f"seed {s}: the runs recorded other steps")
        loss_diff[s] = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
    step_alone = statistics.median(median_step(rec_alone[s]) for s in seeds)
    step_group = median_step(rec_group[0])
    return {
        "size": args.size, "recipe": args.recipe, "batch": args.batch, "seq": args.seq, "steps": args.steps,
        "seeds": args.seeds, "source": args.source, "separate_in_parallel": args.parallel,
        "separate_wall_s": t_alone, "group_wall_s": t_group,
        "separate_runs_per_min": 60 * args.seeds / t_alone, "group_runs_per_min": 60 * args.seeds / t_group,
        "wall_ratio": t_alone / t_group,
        "step_s_alone": step_alone, "step_s_group": step_group,
        "steady_ratio": args.seeds * step_alone / step_group,
        "max_abs_loss_diff": {str(s): d for s, d in loss_diff.items()},
        "final_loss": {str(s): [rec_alone[s][-1]["loss"], rec_group[s][-1]["loss"]] for s in seeds},
    }


def report(r: dict) -> str:
    lines = [f"{r['size']} {r['recipe']}, batch {r['batch']} x seq {r['seq']}, {r['steps']} steps, "
             f"{r['seeds']} seeds ({r['source']} data)",
             f"separate processes ({'at once' if r['separate_in_parallel'] else 'one after another'}): "
             f"{r['separate_wall_s']:.1f} s, {r['separate_runs_per_min']:.2f} runs/min",
             f"one process, seeds_per_process={r['seeds']}: {r['group_wall_s']:.1f} s, "
             f"{r['group_runs_per_min']:.2f} runs/min",
             f"ratio (runs per minute): {r['wall_ratio']:.2f}x",
             f"steady step: alone {1e3 * r['step_s_alone']:.2f} ms, group {1e3 * r['step_s_group']:.2f} ms; "
             f"{r['seeds']} x alone / group = {r['steady_ratio']:.2f}x"]
    for s, d in r["max_abs_loss_diff"].items():
        a, b = r["final_loss"][s]
        lines.append(f"seed {s}: max |loss alone - loss in group| over every step {d:.2e} "
                     f"(final {a:.5f} vs {b:.5f})")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark_seeds", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="20m")
    p.add_argument("--recipe", default="bf16")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--source", default="synthetic", help="data.source (default synthetic: no corpus needed)")
    p.add_argument("--parallel", action="store_true", help="run the separate processes at once")
    p.add_argument("--root", default=None, help="where the runs go (default: a temporary directory, removed)")
    p.add_argument("--json", default=None, help="write the result (with the environment) here")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    root = args.root or tempfile.mkdtemp(prefix="benchmark_seeds_")
    try:
        result = measure(args, root)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print(report(result))
    if args.json:
        write_json(args.json, {"environment": environment(), "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
