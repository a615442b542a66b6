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
- ``mxfp8``, ``mxfp4``, ``nvfp4``: every GEMM operand in that block format (OCP MX blocks of
  32 with E8M0 scales; NVFP4 blocks of 16 with E4M3 scales under an fp32 tensor scale),
  requantized for each GEMM so that blocks run along its contraction. MXFP8 uses E4M3 for the
  gradients too, as NVIDIA's MXFP8 pretraining recipe does.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re

from lowprec.ops.recipe import Recipe
from lowprec.quant import Quantizer, dge, presets
from lowprec.quant.occ import OCC

_POW2 = "pow2_ceil"  # the FP4 paper's sf = 2**floor(log2(6 / amax)) is 1 / 2**ceil(log2(amax / 6))
E4M3_TENSOR = Quantizer("e4m3fn", "tensor", scale=_POW2)
E5M2_TENSOR = Quantizer("e5m2", "tensor", scale=_POW2)
_REGISTRY: dict[str, Recipe] = {}


def register(name: str, recipe: Recipe, *, overwrite: bool = False) -> Recipe:
    """Makes ``recipe`` available as ``get(name)`` (and by name in configs and rules)."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"register({name!r}, ...) needs a Recipe; got {type(recipe).__name__}")
    if name in _REGISTRY and not overwrite and _REGISTRY[name] != recipe:
        raise ValueError(f"recipe {name!r} is already registered; pass overwrite=True")
    recipe = recipe.replace(name=name)
    _REGISTRY[name] = recipe
    return recipe


def names() -> list[str]:
    """Every registered recipe name, sorted."""
    return sorted(_REGISTRY)


def get(spec: str | Recipe) -> Recipe:
    """A recipe by name, a factory call such as ``"fp4(act_bits=8, dge_k=3)"``, a named recipe
    with some of its ``Recipe`` fields replaced, such as ``"fp8_delayed(fp8_transposes='pallas')"``
    (keyword arguments, literal values; for configs and command lines), or a Recipe (returned
    as is)."""
    if isinstance(spec, Recipe):
        return spec
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    call = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", spec or "", re.S)
    if call and call.group(1) in _REGISTRY:
        kwargs = _keywords(spec, call.group(2))
        fields = [f.name for f in dataclasses.fields(Recipe) if f.name != "name"]
        unknown = sorted(set(kwargs) - set(fields))
        if unknown:
            raise ValueError(f"recipe {spec!r}: unknown Recipe field(s) {', '.join(unknown)}; "
                             f"fields: {', '.join(fields)}")
        return _REGISTRY[call.group(1)].replace(**kwargs, name=spec.strip())
    if call and call.group(1) in FACTORIES:
        factory, kwargs = FACTORIES[call.group(1)], _keywords(spec, call.group(2))
        allowed = [p for p in inspect.signature(factory).parameters if p != "name"]
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"recipe {spec!r}: unknown argument(s) {', '.join(unknown)}; "
                             f"{call.group(1)}() takes {', '.join(allowed)}")
        return factory(**kwargs).replace(name=spec.strip())
    raise ValueError(f"unknown recipe {spec!r}; known: {', '.join(names())}, or a call of "
                     f"{', '.join(f'{f}(...)' for f in FACTORIES)}")


def _keywords(spec: str, text: str) -> dict:
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        if call.args:
            raise ValueError("positional arguments")
        return {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"recipe {spec!r}: arguments must be keyword=literal pairs ({e})") from None


def fp4(weight_bits: int = 4, act_bits: int = 4, *, dge_k: float | None = None, occ_alpha: float | None = None,
        weight_granularity: str = "channel", act_granularity: str = "token", occ_per: str = "tensor",
        quantile: str = "exact", compensate: bool = True, compensation: str = "separate",
        element: str = "e2m1fn", name: str | None = None) -> Recipe:
    """The FP4 paper's recipe family: W{weight_bits}A{act_bits} with optional DGE and OCC.

    4-bit operands are ``element`` (E2M1, the paper's; E1M2 and E3M0 are its other FP4
    candidates) with power-of-two scales, 8-bit ones E4M3 with fp32 scales. ``dge_k``: DGE on the weights with that k (None: direct quantization, STE).
    ``occ_alpha``: OCC on the activations (None: none); ``occ_per``, ``quantile``,
    ``compensate`` configure it and ``compensation`` picks how (see ``Recipe``). Granularities
    (``"channel"``/``"token"`` vector-wise, or ``"tensor"``) are the paper's ablation (d).
    """
    weight = Quantizer(_element("weight_bits", weight_bits, element), weight_granularity, scale=_scale(weight_bits),
                       estimator="ste" if dge_k is None else dge(k=dge_k))
    occ = None if occ_alpha is None else OCC(alpha=occ_alpha, per=occ_per, compensate=compensate, quantile=quantile)
    act = Quantizer(_element("act_bits", act_bits, element), act_granularity, scale=_scale(act_bits), occ=occ)
    if name is None:
        name = f"w{weight_bits}a{act_bits}" + (f"+dge(k={dge_k:g})" if dge_k is not None else "") + (
            f"+occ({occ_alpha:g})" if occ_alpha is not None else "")
    return Recipe(fwd_act=act, fwd_weight=weight, dgrad_grad=E5M2_TENSOR, wgrad_grad=E5M2_TENSOR,
                  reuse_forward=True, compute_dtype="bfloat16", compensation=compensation, name=name)


def _every_role(q: Quantizer) -> Recipe:
    return Recipe(fwd_act=q, fwd_weight=q, dgrad_grad=q, dgrad_weight=q, wgrad_grad=q, wgrad_act=q,
                  compute_dtype="bfloat16")


def _element(field: str, bits: int, element: str) -> str:
    if bits not in (4, 8):
        raise ValueError(f"{field} must be 4 ({element}) or 8 (E4M3); got {bits!r}")
    return element if bits == 4 else "e4m3fn"


def _scale(bits: int) -> str:
    return _POW2 if bits == 4 else "fp32"


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
w4a4 = register("w4a4", fp4(4, 4))
w4a8 = register("w4a8", fp4(4, 8))
w8a4 = register("w8a4", fp4(8, 4))
mxfp8 = register("mxfp8", _every_role(presets.MXFP8_E4M3))
mxfp4 = register("mxfp4", _every_role(presets.MXFP4))
nvfp4 = register("nvfp4", _every_role(presets.NVFP4))
FACTORIES = {"fp4": fp4}
