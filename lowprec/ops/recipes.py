"""Named recipes: ``lp.recipes.get("fp8")`` or ``lp.recipes.fp8``; ``register`` adds your own.

- ``none``: no quantization, operands in their own dtype (``QuantDense`` then equals ``nnx.Linear``).
- ``bf16``: no quantization, bf16 operands, f32 accumulation.
- ``fp8``: E4M3 forward operands, E5M2 output gradients, per-tensor current scaling; the
  backward reuses the forward's FP8 operands (FP8-LM / Transformer Engine style). On a
  process with one GPU, operands used in two layouts get both from one Pallas cast-transpose
  kernel (``fp8_transposes="auto"``); elsewhere XLA lays them out (logged).
  Per-tensor FP8 scales here are powers of two, 2**ceil(log2(amax / max)) (never clipping;
  DeepSeek-V3 and MX use power-of-two scales too): scaling by them is exact in any dtype, so
  an FP8 GEMM writes bf16 directly and a simulated one folds them into its operands.
- ``fp8_delayed``: ``fp8`` with delayed scaling (Transformer Engine's default): each operand's
  scale from the largest amax of the last 16 steps, carried as state (``amax_history``).
- ``fp8_pallas``: ``fp8`` whose operands always get both their GEMM layouts from one Pallas
  cast-transpose kernel (``ops.cast_transpose``) instead of two XLA passes, interpreted on
  non-GPU backends; same bits where XLA rounds each operand to its dtype before quantizing it
  (see ``ops.cast_transpose``). ``"fp8(fp8_transposes='fused')"`` never uses the kernel.
- ``fp4_paper``: the FP4 paper (Wang et al. 2025): weights E2M1 per output channel with DGE
  (k=5), activations E2M1 per token with OCC (alpha=0.99), output gradients E5M2 per tensor,
  backward reusing the FP4 operands. ``fp4(...)`` builds its ablations; ``w4a4``, ``w4a8``
  and ``w8a4`` are the direct (STE, no OCC) ones.
- ``fp4_msamp``: what the paper's released code (Azure/MS-AMP, FP4 Megatron hook) computes:
  weights E2M1 per *input* channel with DGE (k=5, bf16 derivative), activations E2M1 per token
  clamped to per-token quantiles at the code's indices (alpha=0.99, no compensation), ties
  toward +inf, scales computed in bf16; see ``_fp4_msamp`` for each choice and its source.
- ``mxfp8``, ``mxfp4``, ``nvfp4``: every GEMM operand in that block format (OCP MX blocks of
  32 with E8M0 scales; NVFP4 blocks of 16 with E4M3 scales under an fp32 tensor scale),
  requantized for each GEMM so that blocks run along its contraction. MXFP8 uses E4M3 for the
  gradients too, as NVIDIA's MXFP8 pretraining recipe does.
"""

from __future__ import annotations

import dataclasses

from lowprec.ops.recipe import Recipe
from lowprec.quant import Quantizer, dge, presets
from lowprec.quant.occ import OCC
from lowprec.registry import Registry

_POW2 = "pow2_ceil"  # the FP4 paper's sf = 2**floor(log2(6 / amax)) is 1 / 2**ceil(log2(amax / 6))
E4M3_TENSOR = Quantizer("e4m3fn", "tensor", scale=_POW2)
E5M2_TENSOR = Quantizer("e5m2", "tensor", scale=_POW2)
def _check(name: str, recipe: Recipe) -> Recipe:
    if not isinstance(recipe, Recipe):
        raise TypeError(f"register({name!r}, ...) needs a Recipe; got {type(recipe).__name__}")
    return recipe.replace(name=name)


RECIPES = Registry("recipe", check=_check, derive=lambda r, kwargs: r.replace(**kwargs),
                   params=lambda r: [f.name for f in dataclasses.fields(Recipe) if f.name != "name"])
_REGISTRY = RECIPES._entries


def register(name: str, recipe: Recipe, *, overwrite: bool = False) -> Recipe:
    """Makes ``recipe`` available as ``get(name)`` (and by name in configs and rules)."""
    return RECIPES.register(name, recipe, overwrite)


def names() -> list[str]:
    """Every registered recipe name, sorted."""
    return RECIPES.names()


def get(spec: str | Recipe) -> Recipe:
    """A recipe by name, a factory call such as ``"fp4(act_bits=8, dge_k=3)"``, a named recipe
    with some of its ``Recipe`` fields replaced, such as ``"fp8_delayed(fp8_transposes='pallas')"``
    (keyword arguments, literal values; for configs and command lines), or a Recipe (returned
    as is). A recipe built from a call is named by the call."""
    if isinstance(spec, Recipe):
        return spec
    recipe = RECIPES.get(spec)
    return recipe if spec.strip() in RECIPES else recipe.replace(name=spec.strip())


def fp4(weight_bits: int = 4, act_bits: int = 4, *, dge_k: float | None = None, occ_alpha: float | None = None,
        weight_granularity: str = "channel", act_granularity: str = "token", occ_per: str = "tensor",
        quantile: str = "exact", compensate: bool = True, compensation: str = "separate",
        element: str = "e2m1fn", rounding: str = "nearest_even", scale: str = _POW2, occ_index: str = "tail",
        dge_dtype: str | None = None, dge_outside: str = "end", dge_mean_one: bool = False,
        act_element: str | None = None, name: str | None = None) -> Recipe:
    """The FP4 paper's recipe family: W{weight_bits}A{act_bits} with optional DGE and OCC.

    4-bit operands are ``element`` (E2M1, the paper's; E1M2 and E3M0 are its other FP4
    candidates; ``act_element``, if given, for the activations alone) with ``scale`` (default power-of-two scales, ``"pow2_ceil"``) and ``rounding``;
    8-bit ones E4M3 with fp32 scales, rounded to nearest-even. Granularities (``"channel"``/
    ``"token"`` vector-wise, or ``"tensor"``) are the paper's ablation (d); ``"tile(1,-1)"``
    gives an (in, out) weight one scale per input channel (the released code's grouping).
    ``dge_k``: DGE on the weights with that k (None: direct quantization, STE), its derivative
    rounded to ``dge_dtype``, valued ``dge_outside`` the range and, with ``dge_mean_one``, divided
    by its interval mean (see ``quant.dge``).
    ``occ_alpha``: OCC on the activations (None: none); ``occ_per`` is its quantile group,
    ``"tensor"`` (the default) or ``"token"`` (one pair of bounds per row), also from a config
    string: ``"fp4(occ_alpha=0.99, occ_per='token')"``; ``occ_index`` (``"tail"`` or ``"floor"``),
    ``quantile`` and ``compensate`` configure it too (see ``quant.OCC``), and ``compensation``
    picks how the residual is added (see ``Recipe``).
    """
    estimator = "ste" if dge_k is None else dge(k=dge_k, dtype=dge_dtype, outside=dge_outside,
                                                     mean_one=dge_mean_one)
    weight = _operand(weight_bits, "weight_bits", element, weight_granularity, scale, rounding, estimator=estimator)
    occ = None if occ_alpha is None else OCC(alpha=occ_alpha, per=occ_per, compensate=compensate, quantile=quantile,
                                             index=occ_index)
    act = _operand(act_bits, "act_bits", act_element or element, act_granularity, scale, rounding, occ=occ)
    if name is None:
        name = f"w{weight_bits}a{act_bits}" + (f"+dge(k={dge_k:g})" if dge_k is not None else "") + (
            f"+occ({occ_alpha:g})" if occ_alpha is not None else "")
    return Recipe(fwd_act=act, fwd_weight=weight, dgrad_grad=E5M2_TENSOR, wgrad_grad=E5M2_TENSOR,
                  reuse_forward=True, compute_dtype="bfloat16", compensation=compensation, name=name)


def _operand(bits: int, field: str, element: str, granularity: str, scale: str, rounding: str, **kw) -> Quantizer:
    """A 4-bit ``element`` operand with ``scale`` and ``rounding``, or an 8-bit E4M3 one (fp32 scales)."""
    if bits not in (4, 8):
        raise ValueError(f"{field} must be 4 ({element}) or 8 (E4M3); got {bits!r}")
    if bits == 8:
        return Quantizer("e4m3fn", granularity, scale="fp32", **kw)
    return Quantizer(element, granularity, scale=scale, rounding=rounding, **kw)


def _every_role(q: Quantizer) -> Recipe:
    return Recipe(fwd_act=q, fwd_weight=q, dgrad_grad=q, dgrad_weight=q, wgrad_grad=q, wgrad_act=q,
                  compute_dtype="bfloat16")


none = register("none", Recipe())
bf16 = register("bf16", Recipe(compute_dtype="bfloat16"))
fp8 = register("fp8", Recipe(fwd_act=E4M3_TENSOR, fwd_weight=E4M3_TENSOR, dgrad_grad=E5M2_TENSOR,
                             wgrad_grad=E5M2_TENSOR, reuse_forward=True, compute_dtype="bfloat16"))
_E4M3_DELAYED, _E5M2_DELAYED = E4M3_TENSOR.replace(source="delayed"), E5M2_TENSOR.replace(source="delayed")
fp8_delayed = register("fp8_delayed", fp8.replace(fwd_act=_E4M3_DELAYED, fwd_weight=_E4M3_DELAYED,
                                                  dgrad_grad=_E5M2_DELAYED, wgrad_grad=_E5M2_DELAYED))
fp8_pallas = register("fp8_pallas", fp8.replace(fp8_transposes="pallas"))
fp4_paper = register("fp4_paper", fp4(dge_k=5, occ_alpha=0.99))
# The same method, faster to simulate: OCC's quantiles estimated, and the residual joined to the
# quantized activation before one GEMM instead of a second GEMM (equal up to bf16 rounding).
fp4_paper_fast = register("fp4_paper_fast", fp4(dge_k=5, occ_alpha=0.99, quantile="approx", compensation="fused",
                                                name="fp4_paper_fast"))


def _fp4_msamp() -> Recipe:
    """The FP4 recipe as Azure/MS-AMP's released code runs it (commit 9746ea8), where it differs
    from the paper's text (``fp4_paper``):

    - weights per input channel: ``quantize_simulate_fp4_in_bf16(channel_wise=True)`` takes the
      amax over dim 0 of the (out, in) Megatron weight (``msamp/operators/fp4_quantize/
      fp4_quantize.py``); lowprec's kernels are (in, out), so ``"tile(1,-1)"`` (one scale per row);
    - activations per token, clamped first to per-token quantiles (``token_wise=True,
      outlier_clip=True, clip_threshold=0.99``, ``residual_compensation`` left False:
      ``msamp/megatron/layers.py``); bounds at sorted indices int((1-α)n) and int(αn)
      (``_apply_quantile_clipping``): ``OCC(index="floor")``;
    - E2M1 rounding by strict ``<`` against the midpoints (``quantize_bf16_kernel``,
      ``quantize.cu``): ties go toward +inf, ``rounding="nearest_up"``;
    - scale multiplier 2**floor(log2(6/amax)) with margin 0, evaluated in bf16 on the bf16 amax
      (TorchScript: ``6 / amax`` is ``reciprocal(amax) * 6``, each rounded to bf16, then log2
      rounded to bf16), 1 for an all-zero group (``ScalingMeta.compute_scaling_factor``,
      ``msamp/common/tensor/meta.py``): ``scale="pow2_ceil_bf16"`` (``quant.pow2_bf16``); the
      kernels' ``x * sf`` and ``/ sf`` in bf16 are exact (powers of two), as lowprec's fp32
      ones are;
    - DGE on the scaled bf16 weight, k=5, cap 3, f' in fp32 written as bf16, below -6 the
      first interval's formula and above 6 zero (``differentiable_quantize_derivative``,
      ``quantize.cu``), multiplying the weight-gradient GEMM's result (``layers.py``):
      ``dge(k=5, dtype="bfloat16", outside="msamp")``; no estimator on the activation;
    - output gradients E5M2 per tensor, both backward GEMMs reusing the forward operands
      (``layers.py``), bf16 GEMM operands with f32 accumulation.

    Not modelled (``layers.py``): the E4M3 per-tensor cast of the FP4-valued operands before
    the FP8 GEMM (exact unless a group's values fall below E4M3's subnormals relative to the
    tensor's largest), the E5M2/E4M3 metas' delayed scaling (16-step amax window after warm-up),
    the forward FP8 GEMM's reduced-precision accumulation (``use_split_accumulator=False``;
    lowprec accumulates in fp32), and the bf16 rounding of the weight-gradient GEMM's result
    before the DGE multiply (lowprec rounds the fp32 product once: at most one bf16 ulp apart).
    Values the kernel rounds to 0 are +0 there and keep their sign here; NaN inputs give 6 and
    f' = 0 there, NaN here. The layer must compute in bf16 (``QuantDense(dtype="bfloat16")``)
    to see the bf16 operands the hook quantizes (``input.bfloat16()``, ``weight.bfloat16()``).
    Tested against a numpy port of the code: ``tests/ops/test_fp4_msamp.py``; the choices and
    their sources: ``docs/reference/fp4_msamp.md``.
    """
    return fp4(dge_k=5, occ_alpha=0.99, weight_granularity="tile(1,-1)", occ_per="token", compensate=False,
               occ_index="floor", rounding="nearest_up", scale="pow2_ceil_bf16", dge_dtype="bfloat16",
               dge_outside="msamp", name="fp4_msamp")


fp4_msamp = register("fp4_msamp", _fp4_msamp())
w4a4 = register("w4a4", fp4(4, 4))
w4a8 = register("w4a8", fp4(4, 8))
w8a4 = register("w8a4", fp4(8, 4))
mxfp8 = register("mxfp8", _every_role(presets.MXFP8_E4M3))
mxfp4 = register("mxfp4", _every_role(presets.MXFP4))
nvfp4 = register("nvfp4", _every_role(presets.NVFP4))
FACTORIES = RECIPES.constructors
FACTORIES["fp4"] = fp4
