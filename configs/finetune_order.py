"""The fine-tune order study (issue 8): quantize then fine-tune, or fine-tune then quantize?

From one pretrained checkpoint (the default corpus without Shakespeare), every arm fine-tunes on
Shakespeare for the same ``STEPS`` steps with the same data, seed and schedule, and ends with the
domain validation loss of its weights rounded to the study's format (``val_quantized``):

- quantize first: ``qat`` with the STE or with DGE (all weights fine-tuned through the format's
  quantizer), ``qlora`` (a frozen base stored in the format, bf16 adapters merged and rounded
  back to the format at the end);
- fine-tune first: ``full`` in bf16, then round-to-nearest to the format; ``lora`` on the bf16
  base, merged, then rounded;
- ``baseline``: no fine-tuning (learning rate 0): the pretrained model on the domain, and its
  round-to-nearest quantization.

The whole study (pretraining, every arm, the report) is one command:
``python -m experiments.finetune_order --sizes 6m,20m --formats int4,nf4``.

``arg`` is ``"<size>[,<format>]"`` (sizes ``tiny`` — about a minute per run on a CPU —,
``6m``, ``20m``, ``125m``; formats ``int4`` (per output channel) or ``nf4`` (blocks of 64, double
quantization); default ``int4``) for a fine-tune arm, or ``"<size>,pretrain"`` for the run they
all start from. From the repository root, per size (``20m`` here) and format:

    python -m experiments.train --config configs/finetune_order.py:20m,pretrain \\
        --workdir runs/finetune_order/pretrain-20m
    python -m launch.sweep configs/finetune_order.py:20m,int4 --root runs/finetune_order/20m-int4
    python -m launch.sweep configs/finetune_order.py:20m,nf4 --root runs/finetune_order/20m-nf4
    python -m experiments.report runs/finetune_order/20m-int4

One arm by hand (what the sweep runs; ``experiments.finetune`` also prints its memory summary):

    python -m experiments.finetune --config configs/finetune_order.py:20m,int4 \\
        --workdir runs/finetune_order/20m-int4/qat-dge --config.finetune.mode=qat \\
        --config.finetune.qat_estimator=dge

Compare ``val_quantized`` loss at the last step across arms (and ``val`` loss: for qat it is the
same number, for the others the unquantized model's). Learning rates differ by kind as usual
for each method (``LR``); everything else is equal.
"""

from __future__ import annotations

import ml_collections

from configs import lm
from launch.sweep import product, seeds

SIZES = ("tiny", "6m", "20m", "125m")
FORMATS = ("int4", "nf4")
DOMAIN = "shakespeare"
STEPS = {"tiny": 300, "6m": 600, "20m": 600, "125m": 600}
PRETRAIN_STEPS = {"tiny": 1500, "6m": 2000, "20m": 3000, "125m": 2000}
SEEDS = 1
LR = {"full": 1e-4, "qat": 1e-4, "lora": 1e-3, "qlora": 1e-3}
ARMS = (
    {"finetune.mode": "full", "optim.lr": 0.0},  # baseline: the pretrained model
    {"finetune.mode": "full", "optim.lr": LR["full"]},
    {"finetune.mode": "lora", "optim.lr": LR["lora"]},
    {"finetune.mode": "qat", "finetune.qat_estimator": "ste", "optim.lr": LR["qat"]},
    {"finetune.mode": "qat", "finetune.qat_estimator": "dge", "optim.lr": LR["qat"]},
    {"finetune.mode": "qlora", "optim.lr": LR["qlora"]},
)


def pretrain_dir(size: str) -> str:
    return f"runs/finetune_order/pretrain-{size}"


def _parse(arg: str | None) -> tuple[str, str]:
    parts = [p for p in (arg or "20m").split(",") if p]
    size, variant = parts[0], parts[1] if len(parts) > 1 else "int4"
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} in finetune_order:{arg}; known: {', '.join(SIZES)}")
    if variant not in FORMATS + ("pretrain",):
        raise ValueError(f"unknown variant {variant!r} in finetune_order:{arg}; known: {', '.join(FORMATS)}, pretrain")
    return size, variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size, variant = _parse(arg)
    c = lm.get_config("cpu" if size == "tiny" else size)
    c.data.source = "default"  # debian_v1, the corpus the committed results trained on (lm.py's is pypi_v1)
    c.train.progress = False
    c.train.keep_checkpoints = 1
    if variant == "pretrain":
        c.data.exclude = DOMAIN
        c.train.steps = PRETRAIN_STEPS[size]
        c.train.eval_every = c.train.checkpoint_every = c.train.steps // 5
        return c
    c.data.include = DOMAIN
    c.finetune.init_from = pretrain_dir(size)
    c.finetune.base_format = c.finetune.eval_quantized = variant
    c.finetune.lora_rank, c.finetune.lora_alpha = 16, 32.0
    c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = LR["full"], 20, 0.0
    c.train.steps = STEPS[size]
    c.train.eval_every = c.train.checkpoint_every = c.train.steps // 3
    c.train.log_every = 10
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    size, variant = _parse(arg)
    if variant == "pretrain":
        raise ValueError("finetune_order:<size>,pretrain is one run (experiments.train), not a sweep")
    return product([dict(a) for a in ARMS], seeds(SEEDS))
