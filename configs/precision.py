"""The precision sweep: the ~20M LLaMA-style model on the default corpus under six recipes, two seeds.

    python -m launch.sweep configs/precision.py --root runs/precision --dry-run   # the 12 runs
    python -m launch.sweep configs/precision.py --root runs/precision             # one run per GPU
    python -m experiments.report runs/precision

``get_config(arg)`` is one run (``configs/lm.py``'s 20m model, identical hyperparameters for
every recipe: AdamW b=(0.9, 0.95), wd 0.1, warmup then cosine decay to 10%), ``arg`` optionally
naming the recipe; ``get_sweep`` lists the runs as overrides of it. The length (1500 steps of
64 x 512 bytes, 49M tokens) is ``STEPS``.
"""

from __future__ import annotations

import ml_collections

from configs import lm
from launch.sweep import axis, product, seeds

RECIPES = ("bf16", "fp8", "w4a8", "w8a4", "w4a4", "fp4_paper")
STEPS = 1500


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = lm.get_config(f"20m,{arg or 'bf16'}")
    c.data.source = "default"  # debian_v1, the corpus the committed results trained on (lm.py's is pypi_v1)
    c.train.steps = STEPS
    c.train.log_every = 25
    c.train.eval_every = 250
    c.train.eval_batches = 20
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 1
    c.train.telemetry_every = 500
    c.train.progress = False
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    del arg
    return product(axis("recipe", RECIPES), seeds(2))
