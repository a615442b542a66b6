"""The whole fine-tune order study in one command: pretraining, every arm, the report.

    python -m experiments.finetune_order --sizes 6m,20m --formats int4,nf4
    python -m experiments.finetune_order --sizes tiny --formats int4 --out runs/finetune_order/report

For each size: the pretraining run of ``configs/finetune_order.py`` (trained unless it holds a
checkpoint), then the sweep of every arm per format (``launch.sweep``: finished runs are skipped,
interrupted ones resume), then ``experiments.finetune_order_report``. A pretraining directory
that says done but holds no checkpoint (copied without it) is moved aside, never overwritten,
and trained again: the arms need its weights. Every arm records the fingerprint of the checkpoint
it started from; an arm that started from another one (a pretraining trained again) or has no
record is moved to ``<root>/stale/`` and trained again, so each size's arms start from one
checkpoint. ``--devices`` as for ``launch.sweep`` (one run at a
time on one GPU by default).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

from configs import finetune_order
from experiments import finetune_order_report
from experiments.common import cli_logging
from lowprec.train import checkpoint
from lowprec.train.rundir import RunDir, read_metrics

log = logging.getLogger("experiments.finetune_order")


def has_checkpoint(workdir: str) -> bool:
    """Whether ``workdir`` holds a finished orbax checkpoint step (a numbered directory)."""
    return checkpoint.latest_on_disk(os.path.join(workdir, "checkpoints")) is not None


def ensure_pretrained(size: str) -> str:
    """The pretraining run of ``size``, trained (or resumed) here unless it holds a checkpoint
    of a finished run."""
    workdir = finetune_order.pretrain_dir(size)
    status = RunDir(workdir).status()[0] if os.path.isdir(workdir) else None
    if status == "done" and has_checkpoint(workdir):
        log.info("%s: pretrained (checkpoint present)", workdir)
        return workdir
    if status == "done":
        aside = f"{workdir}.no-checkpoint-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(workdir, aside)
        log.warning("%s says done but holds no checkpoint: moved to %s, training it again", workdir, aside)
    cmd = [sys.executable, "-m", "experiments.train", "--config", f"configs/finetune_order.py:{size},pretrain",
           "--workdir", workdir]
    log.info("pretraining %s: %s", size, " ".join(cmd))
    if subprocess.run(cmd).returncode != 0 or not has_checkpoint(workdir):
        raise SystemExit(f"error: pretraining {size} failed (see {workdir}/log.txt)")
    return workdir


def pretrained_checkpoint(workdir: str) -> str:
    """The fingerprint of the pretraining run's latest checkpoint (what its fine-tunes load)."""
    ckpts = os.path.join(workdir, "checkpoints")
    return checkpoint.fingerprint(ckpts, checkpoint.latest_on_disk(ckpts))


def set_aside_stale(sweep_root: str, fingerprint: str, aside_root: str) -> list[str]:
    """Moves every started arm under ``sweep_root`` that did not start from the checkpoint
    ``fingerprint`` (another pretraining of the same size, or no record of which) to
    ``aside_root``, so that the sweep trains it again from this one; returns the moved ids."""
    moved = []
    if not os.path.isdir(sweep_root):
        return moved
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for run_id in sorted(os.listdir(sweep_root)):
        path = os.path.join(sweep_root, run_id)
        if not os.path.isfile(os.path.join(path, "config.json")):
            continue
        started = finetune_order_report.started_from(read_metrics(os.path.join(path, "metrics.jsonl")))
        if started == fingerprint:
            continue
        os.makedirs(aside_root, exist_ok=True)
        os.rename(path, os.path.join(aside_root, f"{run_id}.{stamp}"))
        log.warning("%s started from checkpoint %s, not %s (this pretraining): moved to %s, to be trained again",
                    path, started or "(not recorded)", fingerprint, aside_root)
        moved.append(run_id)
    return moved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="6m,20m", help=f"comma-separated, of {', '.join(finetune_order.SIZES)}")
    parser.add_argument("--formats", default="int4,nf4", help=f"comma-separated, of {', '.join(finetune_order.FORMATS)}")
    parser.add_argument("--devices", default="", help="GPU slots for the arms' sweeps (see launch.sweep)")
    parser.add_argument("--out", default="", help="report directory (default: the study's root)")
    args = parser.parse_args(argv)
    cli_logging("[finetune_order] %(message)s")
    sizes, formats = [s for s in args.sizes.split(",") if s], [f for f in args.formats.split(",") if f]
    for name, chosen, known in (("size", sizes, finetune_order.SIZES), ("format", formats, finetune_order.FORMATS)):
        bad = [c for c in chosen if c not in known]
        if bad or not chosen:
            raise SystemExit(f"error: unknown {name}(s) {bad or chosen}; known: {', '.join(known)}")
    root = os.path.dirname(finetune_order.pretrain_dir(sizes[0]))
    from launch import sweep

    rc = 0
    for size in sizes:
        start = pretrained_checkpoint(ensure_pretrained(size))
        log.info("%s: fine-tunes start from checkpoint %s", size, start)
        for fmt in formats:
            set_aside_stale(os.path.join(root, f"{size}-{fmt}"), start, os.path.join(root, "stale", f"{size}-{fmt}"))
            extra = ["--devices", args.devices] if args.devices else []
            rc |= sweep.main([f"configs/finetune_order.py:{size},{fmt}", "--root", os.path.join(root, f"{size}-{fmt}"),
                              "--refresh", "60", *extra])
    finetune_order_report.main([root, "--out", args.out or root])
    return rc


if __name__ == "__main__":
    sys.exit(main())
