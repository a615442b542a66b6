"""An sbatch script for a sweep: an array job with one run per task, on one node or on several.

    python -m launch.slurm configs/precision.py --root runs/precision --partition gpu > sweep.sbatch
    sbatch sweep.sbatch

One node per run (default): task i runs ``python -m launch.sweep SPEC --root ROOT --worker i
--num-workers N --parallel 1``, i.e. the i-th run; claims keep a re-submitted array from running
a run twice, done runs are skipped and interrupted ones resume from their checkpoints.
With ``--nodes-per-run K > 1`` task i gets K nodes and ``srun`` starts the i-th run's training
command once per node; ``jax.distributed`` initializes from SLURM's environment
(``lowprec.train.distributed``), and the run's mesh spans every node's GPUs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from launch import sweep


def array_script(spec: str, root: str, n_runs: int, *, partition: str | None = None, account: str | None = None,
                 time: str = "04:00:00", gpus_per_task: int = 1, cpus_per_task: int = 8, setup: str = "",
                 python: str = "python", seeds_per_process: int = 1) -> str:
    """One run per array task, each task one node's ``gpus_per_task`` GPUs (the run sees them all);
    ``seeds_per_process`` > 1: a run is a group of seeds (``launch.sweep --seeds-per-process``)."""
    command = (f"{python} -m launch.sweep {shlex.quote(spec)} --root {shlex.quote(root)} "
               f"--worker $SLURM_ARRAY_TASK_ID --num-workers {n_runs} --parallel 1")
    if seeds_per_process > 1:
        command += f" --seeds-per-process {seeds_per_process}"
    if gpus_per_task > 1:
        command += f" --gpus-per-run {gpus_per_task}"
    lines = _header(root, n_runs, partition, account, time) + [
        "#SBATCH --ntasks=1",
        f"#SBATCH --gpus-per-task={gpus_per_task}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
    ] + ([setup] if setup else []) + [command]
    return "\n".join(lines) + "\n"


def multinode_script(runs, root: str, *, nodes: int, partition: str | None = None, account: str | None = None,
                     time: str = "04:00:00", gpus_per_node: int = 8, cpus_per_task: int = 32, setup: str = "",
                     python: str = "python") -> str:
    """One run per array task, each on ``nodes`` nodes: one training process per node (``srun``)."""
    if nodes < 2:
        raise ValueError(f"--nodes-per-run must be >= 2 for a multi-node script; got {nodes}")
    lines = _header(root, len(runs), partition, account, time) + [
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
    ] + ([setup] if setup else []) + ['case "$SLURM_ARRAY_TASK_ID" in']
    for i, run in enumerate(runs):
        command = shlex.join([python] + run.command[1:])
        lines.append(f"  {i}) RUN_DIR={shlex.quote(run.path)}; COMMAND=({command}) ;;")
    lines += [
        '  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
        "esac",
        'if head -n1 "$RUN_DIR/STATUS" 2>/dev/null | grep -qx done; then',
        '  echo "$RUN_DIR is done"; exit 0',
        "fi",
        'mkdir -p "$RUN_DIR"',
        f'srun --nodes={nodes} --ntasks-per-node=1 "${{COMMAND[@]}}" 2>&1 | tee -a "$RUN_DIR/stdout.txt"',
    ]
    return "\n".join(lines) + "\n"


def _header(root: str, n_runs: int, partition: str | None, account: str | None, time: str) -> list[str]:
    if n_runs < 1:
        raise ValueError("the sweep has no runs")
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=lowprec-{os.path.basename(os.path.normpath(root))}",
             f"#SBATCH --time={time}",
             f"#SBATCH --array=0-{n_runs - 1}",
             # SLURM opens the log before the script runs: an absolute path into the sweep's root.
             f"#SBATCH --output={os.path.join(os.path.abspath(root), 'slurm-%A_%a.out')}"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.slurm", description=__doc__.splitlines()[0])
    p.add_argument("spec", help="configs/<file>.py[:<arg>]")
    p.add_argument("--root", required=True, help="the sweep's directory (on storage every node sees)")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--time", default="04:00:00", help="per task, HH:MM:SS")
    p.add_argument("--gpus-per-task", type=int, default=1, help="GPUs of one run on one node")
    p.add_argument("--nodes-per-run", type=int, default=1, help="> 1: multi-node runs (srun + jax.distributed)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="with --nodes-per-run > 1")
    p.add_argument("--cpus-per-task", type=int, default=None, help="default: 8, or 32 per node of a multi-node run")
    p.add_argument("--setup", default="", help="a shell line run first, e.g. 'source .venv/bin/activate'")
    p.add_argument("--python", default="python", help="the interpreter on the compute nodes")
    p.add_argument("--seeds-per-process", type=int, default=1,
                   help="one array task trains up to N seeds of a setting (one-node runs only)")
    args = p.parse_args(argv)
    if args.nodes_per_run < 1:
        p.error(f"--nodes-per-run must be >= 1; got {args.nodes_per_run}")
    if args.seeds_per_process > 1 and args.nodes_per_run > 1:
        p.error("--seeds-per-process trains on one device of one process; it needs --nodes-per-run 1")
    runs = sweep.expand(args.spec, args.root, args.seeds_per_process)
    os.makedirs(args.root, exist_ok=True)  # where SLURM writes the tasks' logs
    common = dict(partition=args.partition, account=args.account, time=args.time, setup=args.setup,
                  python=args.python)
    if args.nodes_per_run > 1:
        text = multinode_script(runs, args.root, nodes=args.nodes_per_run, gpus_per_node=args.gpus_per_node,
                                cpus_per_task=args.cpus_per_task or 32, **common)
    else:
        text = array_script(args.spec, args.root, len(runs), gpus_per_task=args.gpus_per_task,
                            cpus_per_task=args.cpus_per_task or 8, seeds_per_process=args.seeds_per_process,
                            **common)
    sys.stdout.write(text)
    print(f"{len(runs)} runs, {args.nodes_per_run} node(s) each; submit with: sbatch <this script>", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
