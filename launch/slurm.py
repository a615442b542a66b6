"""An sbatch script for a sweep: an array job with one run per task, or multi-node runs.

    python -m launch.slurm configs/precision.py --root runs/precision --partition gpu > sweep.sbatch
    sbatch sweep.sbatch

Array mode (default): task i runs ``python -m launch.sweep SPEC --root ROOT --worker i
--num-workers N --parallel 1``, i.e. the i-th run; claims keep a re-submitted array from running
a run twice, done runs are skipped and interrupted ones resume. With ``--nodes-per-run K > 1``
each run gets K nodes: ``srun`` starts the training command once per node and
``jax.distributed`` initializes from SLURM's environment (``lowprec.train.distributed``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from launch import sweep


def array_script(spec: str, root: str, n_runs: int, *, partition: str | None = None, account: str | None = None,
                 time: str = "04:00:00", gpus_per_task: int = 1, cpus_per_task: int = 8, setup: str = "",
                 python: str = "python") -> str:
    lines = _header(f"lowprec-{os.path.basename(os.path.normpath(root))}", partition, account, time, root) + [
        f"#SBATCH --array=0-{n_runs - 1}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --gpus-per-task={gpus_per_task}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
    ] + ([setup] if setup else []) + [
        f"{python} -m launch.sweep {shlex.quote(spec)} --root {shlex.quote(root)} "
        f"--worker $SLURM_ARRAY_TASK_ID --num-workers {n_runs} --parallel 1",
    ]
    return "\n".join(lines) + "\n"


def multinode_script(spec: str, root: str, runs, *, nodes: int, partition: str | None = None,
                     account: str | None = None, time: str = "04:00:00", gpus_per_node: int = 8,
                     setup: str = "") -> str:
    """One job per run is simplest on clusters that cap arrays of multi-node jobs: the script
    runs the sweep's runs one after another, each on all ``nodes`` nodes."""
    lines = _header(f"lowprec-{os.path.basename(os.path.normpath(root))}", partition, account, time, root) + [
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
    ] + ([setup] if setup else [])
    for run in runs:
        lines += [f"# {run.id}",
                  f"if ! head -n1 {shlex.quote(os.path.join(run.path, 'STATUS'))} 2>/dev/null | grep -qx done; then",
                  f"  srun --nodes={nodes} --ntasks-per-node=1 {shlex.join(['python'] + run.command[1:])}",
                  "fi"]
    return "\n".join(lines) + "\n"


def _header(name, partition, account, time, root) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --time={time}",
             f"#SBATCH --output={os.path.join(root, 'slurm-%A_%a.out')}"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.slurm", description=__doc__.splitlines()[0])
    p.add_argument("spec")
    p.add_argument("--root", required=True)
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--time", default="04:00:00")
    p.add_argument("--gpus-per-task", type=int, default=1)
    p.add_argument("--nodes-per-run", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--setup", default="", help="a shell line run first, e.g. 'source .venv/bin/activate'")
    args = p.parse_args(argv)
    runs = sweep.expand(args.spec, args.root)
    if args.nodes_per_run > 1:
        text = multinode_script(args.spec, args.root, runs, nodes=args.nodes_per_run, partition=args.partition,
                                account=args.account, time=args.time, gpus_per_node=args.gpus_per_node,
                                setup=args.setup)
    else:
        text = array_script(args.spec, args.root, len(runs), partition=args.partition, account=args.account,
                            time=args.time, gpus_per_task=args.gpus_per_task, setup=args.setup)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
