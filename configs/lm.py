"""Train a LLaMA-style byte-level LM on the default corpus with a precision recipe.

    python -m experiments.train --config configs/lm.py:smoke --workdir runs/smoke
    python -m experiments.train --config configs/lm.py:20m,fp8 --workdir runs/20m-fp8
    python -m experiments.train --config configs/lm.py:125m,fp4_paper --workdir runs/125m \\
        --config.train.steps=2000 --config.optim.lr=1e-3

The argument after ':' is "<size>[,<recipe>]" (sizes: tiny, 6m, 20m, 125m, 350m, 1b; recipes:
any name in lp.recipes), "cpu[,<recipe>]" (the tiny model on the default corpus: ~2.5 min
of CPU time on 2 cores) or "smoke" (the tiny model on synthetic data: seconds).
Every field below can be overridden with --config.<path>=<value>; unknown keys are errors.

Fine-tuning a trained run (``finetune.*``; defaults train from scratch as before), e.g. on one
sub-source of the default corpus held out from pretraining (``data.exclude=shakespeare`` there):

    python -m experiments.finetune --config configs/lm.py:20m --workdir runs/ft-qlora \
        --config.finetune.init_from=runs/20m-noshakespeare --config.finetune.mode=qlora \
        --config.data.include=shakespeare --config.train.steps=500
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = [p for p in (arg or "20m").split(",") if p]
    smoke, cpu = parts[0] == "smoke", parts[0] == "cpu"
    size = "tiny" if smoke or cpu else parts[0]
    small = smoke or cpu
    recipe = parts[1] if len(parts) > 1 else "bf16"
    check_variant(arg, parts, size, recipe)

    c = ml_collections.ConfigDict()
    c.seed = 0  # initialization, dropout and every other random stream; the data order too unless data_seed
    c.data_seed = -1  # the data order (batch permutation) alone; -1: the same as seed
    c.imports = ()  # user modules or .py files imported first (their formats, recipes usable by name)
    c.model = ml_collections.ConfigDict(dict(size=size, vocab_size=256, tie_embeddings=False, remat=False,
                                             attention="",  # "" (auto), "xla" or "cudnn"
                                             scan_unroll=0,  # layers per scan iteration; 0: all (fastest step)
                                             arch=""))  # JSON of LlamaConfig fields over size's (finetune.init_from_hf)
    # Precision policy (lp.optim.PRESETS or "param=..,compute=..,master=..,loss_scale=.."):
    # fp32 parameters with bf16 compute by default.
    c.policy = "mixed_bf16"
    # The recipe of every linear layer, except where a (path regex, recipe) rule matches
    # first: the LM head stays in bf16 (the embedding is a lookup, never quantized).
    c.recipe = recipe
    c.recipe_rules = (("lm_head", "bf16"),)
    c.data = ml_collections.ConfigDict(dict(
        source="synthetic" if smoke else "pypi_v1", seq_len=64 if smoke else 128 if cpu else 512,
        batch_size=8 if smoke else 16 if cpu else 64, path="", tokenizer="",  # tokenizer.json for text
        include="", exclude=""))  # sub-sources of the corpus, comma-separated ("" = all); source "default"
    # is debian_v1, the default corpus of runs before pypi_v1 (their config.json says "default")
    # Fine-tuning: init_from a run directory (its latest checkpoint; optimizer fresh); mode full |
    # lora | qlora (adapters on layers matching lora_targets over a base stored in base_format) |
    # qat (every weight trains, the targeted ones through base_format's quantizer with
    # qat_estimator ste | dge); eval_quantized: a format the targeted weights are rounded to for a
    # last validation (adapters merged first), recorded as split "val_quantized".
    c.finetune = ml_collections.ConfigDict(dict(
        init_from="", init_from_hf="", mode="full", lora_rank=8, lora_alpha=16.0, lora_targets="attn|mlp", lora_dropout=0.0,
        base_format="nf4_qlora", qat_estimator="ste", eval_quantized=""))
    c.optim = ml_collections.ConfigDict(dict(
        lr=3e-3 if small else 1e-3, warmup_steps=10 if smoke else 50 if cpu else 200, min_lr_ratio=0.1,
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0, grad_accum=1))
    # Mesh axis sizes (one may be -1: the rest); devices: how many to use (-1: all).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, devices=-1))
    c.train = ml_collections.ConfigDict(dict(
        steps=60 if smoke else 600 if cpu else 5000, log_every=10 if small else 50,
        eval_every=30 if smoke else 200 if cpu else 500, eval_batches=4 if small else 20,
        checkpoint_every=30 if smoke else 200 if cpu else 500, keep_checkpoints=3,
        telemetry_every=0, progress=True,
        seeds_per_process=1))  # seeds seed.. trained in one process (a vmapped axis), each in <workdir>/seed-<s>
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
