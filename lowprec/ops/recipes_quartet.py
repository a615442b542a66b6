"""Quartet (Castro, Panferov et al., arXiv 2505.14669; code IST-DASLab/Quartet), registered as
``lp.recipes.get("quartet")``. Every choice, its source and each guess: ``docs/reference/quartet.md``.

- Forward: both operands (activation and weight) through a 32-point Walsh-Hadamard transform
  along the contraction (no random signs), then QuEST's MXFP4 quantizer on the transformed
  values: E2M1 in blocks of 32 along the contraction, scale 2**floor(log2(c * std + 1e-8)) from
  the block's standard deviation with c = 2.92247856 / 6 (``scale="quest"``), rounded to nearest
  with ties toward zero (the kernel's strict ``>`` thresholds), saturating at 6. The GEMM
  multiplies the two quantized transformed operands.
- Its gradient: QuEST's trust mask, 1 where the scaled transformed value is below 6 in
  magnitude, 0 elsewhere (``estimator="quest_trust"``), applied to the gradient of each
  quantized transformed operand, then the inverse Hadamard.
- Backward: both GEMMs in MXFP4 with stochastic rounding (Tseng et al.'s quantizer: OCP scale
  2**(floor(log2 amax) - 2) times 4/3, so a block's max lands in [3, 6) and never clips;
  ``scale="floor_x4/3"``), each operand after a 32-point random Hadamard transform along that
  GEMM's contraction (``H`` then random signs, drawn anew each step), operating on the
  forward's quantized operands (``requantize_from="forward"``): grad-input from the output
  gradient and the forward-quantized weight, grad-weight from the output gradient and the
  forward-quantized activation. Unbiased: E[dequantized] equals the transformed operand.
"""

from __future__ import annotations

from lowprec.ops.recipe import Recipe
from lowprec.ops.recipes import register
from lowprec.quant import Quantizer
from lowprec.quant.hadamard import Hadamard

QUEST_MXFP4 = Quantizer("e2m1fn", "block(32)", scale="quest", rounding="nearest_zero", estimator="quest_trust")
QUARTET_SR = Quantizer("e2m1fn", "block(32)", scale="floor_x4/3", rounding="stochastic")
QUARTET_HADAMARD = Hadamard(32)
QUARTET_RHT = Hadamard(32, signs="key")
quartet = register("quartet", Recipe(
    fwd_act=QUEST_MXFP4, fwd_weight=QUEST_MXFP4, dgrad_grad=QUARTET_SR, dgrad_weight=QUARTET_SR,
    wgrad_grad=QUARTET_SR, wgrad_act=QUARTET_SR, fwd_hadamard=QUARTET_HADAMARD, dgrad_hadamard=QUARTET_RHT,
    wgrad_hadamard=QUARTET_RHT, requantize_from="forward", compute_dtype="bfloat16"))
