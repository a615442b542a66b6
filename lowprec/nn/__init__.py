"""Flax NNX modules whose GEMMs follow a Recipe (layer 4), and rules that assign recipes.

    layer = lp.nn.QuantDense(512, 2048, recipe="fp8", rngs=nnx.Rngs(0))
    lp.nn.assign_recipes(model, [("lm_head|embed", "bf16"), (".*", "fp4_paper")])
"""

from lowprec.nn.base import GradTelemetry, QuantModule
from lowprec.nn.dense import QuantDense
from lowprec.nn.einsum import QuantEinsum
from lowprec.nn.rules import assign_recipes

__all__ = ["GradTelemetry", "QuantDense", "QuantEinsum", "QuantModule", "assign_recipes"]
