"""Quantized GEMMs (layer 3): ``dot_general`` and ``einsum`` with a Recipe per GEMM role.

    y = lp.dot_general(x, w, (((1,), (0,)), ((), ())), lp.recipes.fp8)
    y = lp.einsum("btd,df->btf", x, w, "fp4_paper")
    h = lp.ops.init_amax_history("fp8_delayed")   # delayed scaling: pass amax_history=h, keep its gradient
    lp.ops.fp8_path(f, x, w)        # "native" where the compiled f runs FP8 tensor-core GEMMs
"""

from lowprec.ops import recipes, recipes_field, recipes_quartet, telemetry
from lowprec.ops.dot import dot_general, init_amax_history
from lowprec.ops.einsum import einsum
from lowprec.ops.native import FP8_TARGET, fp8_path, gemm_targets, parse_gemms
from lowprec.ops.recipe import ROLES, Recipe
from lowprec.quant.execution import Execution
from lowprec.quant.hadamard import Hadamard

__all__ = [
    "Execution", "FP8_TARGET", "Hadamard", "ROLES", "Recipe", "dot_general", "einsum", "fp8_path", "gemm_targets",
    "init_amax_history", "parse_gemms", "recipes", "recipes_field", "recipes_quartet", "telemetry",
]
