"""Post-training quantization vs model size: does INT4 hurt the small model more?

    python -m experiments.ptq --config configs/ptq.py --out experiments/results/ptq           # all sizes
    python -m experiments.ptq --config configs/ptq.py:6m,20m --out runs/ptq-small              # some sizes
    python -m experiments.ptq --checkpoint runs/20m --weights int4 --method gptq               # one setting

The checkpoints are the pretrained runs of ``configs/finetune_order.py`` (one per size, trained
on the default corpus without Shakespeare; make them with
``python -m experiments.train --config configs/finetune_order.py:<size>,pretrain --workdir
runs/finetune_order/pretrain-<size>``). Every weight format is applied by round-to-nearest and
by GPTQ to the attention and MLP layers (embeddings and LM head stay bf16), and W8A8 / W4A8
settings add int8 inputs calibrated by absmax, the 99.99th percentile and an MSE search. Other
formats (``nvfp4``, ``e4m3fn``, ``int4:block(128)``, ...) are one flag of ``experiments.ptq``. Each
setting's held-out loss is measured on the run's own validation split, before and after.
"""

from __future__ import annotations

import ml_collections

from configs import finetune_order
from launch.sweep import axis, product

SIZES = ("6m", "20m", "125m")
WEIGHTS = ("int8", "int4", "int4:block(64)", "nf4", "mxfp4")
METHODS = ("rtn", "gptq")
ACTIVATIONS = [  # (weights, activations, calibration), weights rounded to nearest
    ("int8", "int8", "absmax"), ("int4", "int8", "absmax"), ("int4", "int8", "percentile"), ("int4", "int8", "mse"),
]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """One PTQ setting (the sweep's overrides pick checkpoint and formats)."""
    del arg
    c = ml_collections.ConfigDict()
    c.checkpoint = finetune_order.pretrain_dir("20m")
    c.weights = "int4"
    c.method = "rtn"
    c.targets = "attn|mlp"
    c.activations = ""
    c.act_calibration = "absmax"
    c.percentile = 99.99
    c.damp = 0.01
    c.calib_batches = 4       # batches of the run's training split (its batch size and length)
    c.eval_batches = 20       # held-out batches, the same for every setting
    return c


def sizes(arg: str | None) -> list[str]:
    chosen = [s for s in (arg or ",".join(SIZES)).split(",") if s]
    unknown = [s for s in chosen if s not in finetune_order.SIZES]
    if unknown:
        raise ValueError(f"unknown size(s) {unknown} in ptq:{arg}; known: {', '.join(finetune_order.SIZES)}")
    return chosen


def get_sweep(arg: str | None = None) -> list[dict]:
    """Checkpoints (``arg``: comma-separated sizes) x (weight formats x methods, and W/A settings)."""
    settings = product(axis("weights", WEIGHTS), axis("method", METHODS))
    settings += [{"weights": w, "method": "rtn", "activations": a, "act_calibration": c} for w, a, c in ACTIVATIONS]
    return product(axis("checkpoint", [finetune_order.pretrain_dir(s) for s in sizes(arg)]), settings)
