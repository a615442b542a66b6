"""Flax NNX modules whose GEMMs follow a Recipe (layer 4), and rules that assign recipes.

    layer = lp.nn.QuantDense(512, 2048, recipe="fp8", rngs=nnx.Rngs(0))
    lp.nn.assign_recipes(model, [("lm_head|embed", "bf16"), (".*", "fp4_paper")])
    lp.nn.assign_execution(model, "fp8_transposes=separate")   # how, never which bits
    lp.nn.update_amax_histories(model, grads)   # delayed scaling ("fp8_delayed"): after each step
    lp.nn.apply_lora(model, "attn|mlp", rank=8, alpha=16, base="nf4", rngs=nnx.Rngs(0))   # QLoRA
    lp.nn.QuantizedDense(layer, "int4")         # frozen packed codes and scales (QLoRA's base, PTQ)
"""

from lowprec.nn.base import AmaxHistory, GradTelemetry, QuantModule, update_amax_histories
from lowprec.nn.dense import QuantDense, QuantDenseGeneral
from lowprec.nn.einsum import QuantEinsum
from lowprec.nn.lora import LoRADense, LoRAParam, apply_lora, count_params, merge_lora, set_deterministic
from lowprec.nn.packed import QuantizedDense, QuantizedWeight, weight_quantizer
from lowprec.nn.rules import assign_execution, assign_recipes
from lowprec.nn.tied import QuantAttend

__all__ = [
    "AmaxHistory", "GradTelemetry", "LoRADense", "LoRAParam", "QuantAttend", "QuantDense", "QuantDenseGeneral",
    "QuantEinsum", "QuantModule", "QuantizedDense", "QuantizedWeight", "apply_lora", "assign_execution",
    "assign_recipes", "count_params", "merge_lora", "set_deterministic", "update_amax_histories", "weight_quantizer",
]
