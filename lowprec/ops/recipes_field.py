"""The field's published training recipes, registered by name (``lp.recipes.get("nvfp4_train")``).

Every choice, its source and each guess: ``docs/reference/recipes_field.md``.

- ``fp8_rowwise``: torchao's float8 rowwise recipe (``Float8LinearConfig.from_recipe_name("rowwise")``):
  every operand of the three GEMMs E4M3 with one scale per row along that GEMM's contraction,
  requantized from high precision for each GEMM, scales rounded to powers of two
  (``round_scales_to_power_of_2``: the multiplier max/amax rounded down, i.e. ``pow2_ceil``).
- ``fp8_deepseek``: DeepSeek-V3's FP8 recipe: E4M3 everywhere, activations and gradients in
  1x128 tiles along the contraction (so 128x1 along tokens in the weight gradient), weights in
  128x128 blocks, fp32 scales, fp32 accumulation.
- ``mxfp8_te``: Transformer Engine's ``MXFP8BlockScaling``: E4M3 for every operand (gradients
  too), blocks of 32 along each GEMM's contraction, E8M0 scales rounded up (amax / 448 to the
  next power of two, cuBLAS's and torchao's ``RCEIL``), requantized per GEMM. (The OCP-rule
  ``mxfp8`` of ``ops.recipes`` rounds the scale down instead.)
- ``nvfp4_train``: NVIDIA's NVFP4 pretraining recipe (arXiv 2509.25149, Transformer Engine's
  ``NVFP4BlockScaling``): E2M1 in 1x16 blocks, E4M3 block scales under an fp32 tensor scale;
  weights in 16x16 blocks (a weight and its transpose quantize alike); a 16-point random
  Hadamard transform on both inputs of the weight-gradient GEMM, signs from the step's key;
  stochastic rounding on the output gradients. Keeping the last layers in bf16 is a rule on the
  model (see the reference notes), not part of this per-layer recipe.
- ``mxfp4_tseng``: Tseng et al., "Training LLMs with MXFP4" (arXiv 2502.20586, code
  amazon-science/mxfp4-llm): BF16 forward GEMM; both backward GEMMs in MXFP4 (E2M1, blocks
  of 32 along the contraction, OCP E8M0 scales) on all four of their operands, requantized
  from high precision, stochastically rounded after scaling each block by 3/4 (scale
  ``floor_x4/3``: the block's max lands in [3, 6) and never clips; the GEMM's result is
  multiplied by (4/3)**2 = 16/9), after a 64-point random Hadamard transform of both operands
  of each backward GEMM along its contraction, signs applied before the Hadamard and drawn
  anew each step and GEMM.
"""

from __future__ import annotations

from lowprec.ops.recipe import Recipe
from lowprec.ops.recipes import register
from lowprec.quant import Quantizer
from lowprec.quant.hadamard import Hadamard


def _gemms(act: Quantizer, weight: Quantizer, grad: Quantizer, **fields) -> Recipe:
    """Each GEMM requantizes its operands from high precision (act, weight, output gradient)."""
    return Recipe(fwd_act=act, fwd_weight=weight, dgrad_grad=grad, dgrad_weight=weight, wgrad_grad=grad,
                  wgrad_act=act, compute_dtype="bfloat16", **fields)


_ROW = Quantizer("e4m3fn", "token", scale="pow2_ceil")  # bound to each GEMM's contraction
fp8_rowwise = register("fp8_rowwise", _gemms(_ROW, _ROW, _ROW))

_DS_TILE = Quantizer("e4m3fn", "block(128)", scale="fp32")
_DS_BLOCK = Quantizer("e4m3fn", "tile(128,128)", scale="fp32")
fp8_deepseek = register("fp8_deepseek", _gemms(_DS_TILE, _DS_BLOCK, _DS_TILE))

_MX8 = Quantizer("e4m3fn", "block(32)", scale="pow2_ceil")
mxfp8_te = register("mxfp8_te", _gemms(_MX8, _MX8, _MX8))

NVFP4_1D = Quantizer("e2m1fn", "block(16)", scale="e4m3fn", tensor_scale=True)
NVFP4_2D = NVFP4_1D.replace(granularity="tile(16,16)")
NVFP4_SR = NVFP4_1D.replace(rounding="stochastic")
nvfp4_train = register("nvfp4_train", _gemms(NVFP4_1D, NVFP4_2D, NVFP4_SR,
                                             wgrad_hadamard=Hadamard(16, signs="key")))

MXFP4_SR = Quantizer("e2m1fn", "block(32)", scale="floor_x4/3", rounding="stochastic")
_RHT64 = Hadamard(64, signs="key", signs_first=True)
mxfp4_tseng = register("mxfp4_tseng", Recipe(dgrad_grad=MXFP4_SR, dgrad_weight=MXFP4_SR, wgrad_grad=MXFP4_SR,
                                             wgrad_act=MXFP4_SR, compute_dtype="bfloat16",
                                             dgrad_hadamard=_RHT64, wgrad_hadamard=_RHT64))
