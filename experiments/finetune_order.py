"""The whole fine-tune order study in one command: pretraining, every arm, the report.

    python -m experiments.finetune_order --sizes 6m,20m --formats int4,nf4
    python -m experiments.finetune_order --sizes tiny --formats int4 --out runs/finetune_order/report

For each size: the pretraining run of ``configs/finetune_order.py`` (trained unless it holds a
checkpoint), then the sweep of every arm per format (``launch.sweep``: finished runs are skipped,
interrupted ones resume), then ``experiments.finetune_order_report``. A pretraining directory
that says done but holds no checkpoint (copied without it) is moved aside, never overwritten,
and trained again: the arms need its weights. ``--devices`` as for ``launch.sweep`` (one run at a
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
from lowprec.train.rundir import RunDir

log = logging.getLogger("experiments.finetune_order")


def has_checkpoint(workdir: str) -> bool:
    """Whether ``workdir`` holds a finished orbax checkpoint step (a numbered directory)."""
    ckpts = os.path.join(workdir, "checkpoints")
    return os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts))


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="6m,20m", help=f"comma-separated, of {', '.join(finetune_order.SIZES)}")
    parser.add_argument("--formats", default="int4,nf4", help=f"comma-separated, of {', '.join(finetune_order.FORMATS)}")
    parser.add_argument("--devices", default="", help="GPU slots for the arms' sweeps (see launch.sweep)")
    parser.add_argument("--out", default="", help="report directory (default: the study's root)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[finetune_order] %(message)s")
    sizes, formats = [s for s in args.sizes.split(",") if s], [f for f in args.formats.split(",") if f]
    for name, chosen, known in (("size", sizes, finetune_order.SIZES), ("format", formats, finetune_order.FORMATS)):
        bad = [c for c in chosen if c not in known]
        if bad or not chosen:
            raise SystemExit(f"error: unknown {name}(s) {bad or chosen}; known: {', '.join(known)}")
    root = os.path.dirname(finetune_order.pretrain_dir(sizes[0]))
    from launch import sweep

    rc = 0
    for size in sizes:
        ensure_pretrained(size)
        for fmt in formats:
            extra = ["--devices", args.devices] if args.devices else []
            rc |= sweep.main([f"configs/finetune_order.py:{size},{fmt}", "--root", os.path.join(root, f"{size}-{fmt}"),
                              "--refresh", "60", *extra])
    from experiments import finetune_order_report

    finetune_order_report.main([root, "--out", args.out or root])
    return rc


if __name__ == "__main__":
    sys.exit(main())
