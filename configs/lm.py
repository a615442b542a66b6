"""Train a LLaMA-style byte-level LM on the default corpus with a precision recipe.

    python -m experiments.train --config configs/lm.py:smoke --workdir runs/smoke
    python -m experiments.train --config configs/lm.py:20m,fp8 --workdir runs/20m-fp8
    python -m experiments.train --config configs/lm.py:125m,fp4_paper --workdir runs/125m \\
        --config.train.steps=2000 --config.optim.lr=1e-3

The argument after ':' is "<size>[,<recipe>]" (sizes: tiny, 6m, 20m, 125m, 350m, 1b; recipes:
any name in lp.recipes), "cpu[,<recipe>]" (the tiny model on the default corpus: ~2.5 min
of CPU time on 2 cores) or "smoke" (the tiny model on synthetic data: seconds).
Every field (lowprec/train/schema.py: defaults, meanings, allowed values; listed by --helpconfig) can
be overridden with --config.<path>=<value>; unknown keys are errors.

Fine-tuning a trained run (``finetune.*``; defaults train from scratch as before), e.g. on one
sub-source of the default corpus held out from pretraining (``data.exclude=shakespeare`` there):

    python -m experiments.finetune --config configs/lm.py:20m --workdir runs/ft-qlora \
        --config.finetune.init_from=runs/20m-noshakespeare --config.finetune.mode=qlora \
        --config.data.include=shakespeare --config.train.steps=500
"""

from __future__ import annotations

import ml_collections

from lowprec.train import schema


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = [p for p in (arg or "20m").split(",") if p]
    smoke, cpu = parts[0] == "smoke", parts[0] == "cpu"
    size = "tiny" if smoke or cpu else parts[0]
    small = smoke or cpu
    recipe = parts[1] if len(parts) > 1 else "bf16"
    check_variant(arg, parts, size, recipe)

    # Every field at its default (lowprec.train.schema, where each is described); then the variant's.
    c = schema.defaults()
    c.model.size = size
    c.recipe = recipe
    if small:
        c.data.seq_len, c.data.batch_size = (64, 8) if smoke else (128, 16)
        c.optim.lr, c.optim.warmup_steps = 3e-3, 10 if smoke else 50
        c.train.steps, c.train.eval_every = (60, 30) if smoke else (600, 200)
        c.train.checkpoint_every = c.train.eval_every
        c.train.log_every, c.train.eval_batches = 10, 4
    if smoke:
        c.data.source = "synthetic"
    return c


def check_variant(arg, parts: list[str], size: str, recipe: str) -> None:
    """A clear error for a variant string with extra parts, an unknown size or an unknown recipe."""
    from lowprec.models.llama import SIZES
    from lowprec.ops import recipes

    if len(parts) > 2:
        raise ValueError(f"configs/lm.py variant {arg!r}: expected '<size>[,<recipe>]', 'cpu[,<recipe>]' or "
                         f"'smoke[,<recipe>]'; got {len(parts)} comma-separated parts")
    if size not in SIZES:
        raise ValueError(f"configs/lm.py variant {arg!r}: unknown size {size!r}; known: "
                         f"{', '.join(SIZES)}, cpu, smoke")
    try:
        recipes.get(recipe)
    except ValueError as e:
        raise ValueError(f"configs/lm.py variant {arg!r}: {e}") from None
