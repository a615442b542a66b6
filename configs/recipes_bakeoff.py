"""The recipe bake-off (issue 26): every field recipe beside bf16, fp8 and fp4_paper on the ~20M
LLaMA-style model of the precision study, identical hyperparameters, paired seeds 0 and 1.

    python -m launch.sweep configs/recipes_bakeoff.py --root runs/bakeoff --dry-run
    python -m launch.sweep configs/recipes_bakeoff.py --root runs/bakeoff
    python -m experiments.report runs/bakeoff

``get_config(arg)``: ``configs/precision.py``'s run (``configs/lm.py``'s 20m model, AdamW, warmup
then cosine, ``precision.STEPS`` steps) on the pypi_v1 corpus; ``arg`` names the recipe.
``quartet`` joins when it is registered. Sequences are 512 tokens, a multiple of mxfp4_tseng's
64-point Hadamard along the tokens of the weight-gradient GEMM. nvfp4_train's runs keep the last
2 of the 10 blocks in bf16 (``recipe_rules`` override, ``NVFP4_TRAIN_RULES``): the paper keeps
~15% of the linear layers in BF16, most of them at the end; 2 of 10 blocks is a guess at that
for this depth (see docs/reference/recipes_field.md).
"""

from __future__ import annotations

import ml_collections

from configs import precision
from launch.sweep import axis, product, seeds
from lowprec.ops import recipes

FIELD = ("fp8_rowwise", "fp8_deepseek", "mxfp8_te", "nvfp4_train", "mxfp4_tseng")
BASELINES = ("bf16", "fp8", "fp4_paper")


def _registered(name: str) -> bool:
    try:
        recipes.get(name)
    except ValueError:
        return False
    return True


RECIPES = BASELINES + FIELD + tuple(n for n in ("quartet",) if _registered(n))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = precision.get_config(arg)
    c.data.source = "pypi_v1"
    return c


# The lm_head rule of configs/lm.py, then the last two blocks in bf16.
NVFP4_TRAIN_RULES = (("lm_head", "bf16"), ("blocks[-2:]", "bf16"))


def get_sweep(arg: str | None = None) -> list[dict]:
    del arg
    runs = product(axis("recipe", RECIPES), seeds(2))
    return [{**r, "recipe_rules": NVFP4_TRAIN_RULES} if r["recipe"] == "nvfp4_train" else r for r in runs]
