"""Scales from an amax: exact fp32, powers of two (E8M0: floor / ceil / nearest), or a Format.

``scale = amax / format.max`` maps a group's largest magnitude onto the format's largest
value; quantization multiplies by the inverse scale and dequantization by the scale
(``apply_inverse``, ``apply_scale``). Power-of-two scales are built with exact exponent
arithmetic (through the E8M0 format), never pow/log2.
Non-finite entries never set a scale (amax is over finite values) and an all-zero group gets
scale 1.

Every rule is exact on every backend, for scales far below fp32's normal range too (an MXFP4
block with amax below 2**-124, an INT8 channel below 127 * 2**-126, an NVFP4 tensor below
2688 * 2**-126): the scale arithmetic (amax / max, NVFP4's group scale times tensor scale) is
IEEE fp32 with gradual underflow computed from the bits (``quant.exact``), and a scale or
inverse scale is applied as two normal-range factors, the inverse correctly rounded to 24 bits
even where it exceeds fp32's range (below 2**-128). The output then equals the rule computed
exactly wherever that output is a normal fp32 number; where it is subnormal it is 0 on XLA:CPU
and at most one subnormal step from it elsewhere; it is never NaN for finite input, and a scale
that underflows to 0 (possible only for formats whose max exceeds 2**23) quantizes its group
to zeros. The same holds under ``vmap`` and for the Pallas block kernel (see
``docs/reference/subnormal_scales.md``). What no rule can fix: XLA:CPU flushes subnormal fp32 *inputs* and *outputs* of float
operations to zero, so there a tensor whose values are fp32 subnormals (below 2**-126, about
1.2e-38) reads as zeros, and outputs below 2**-126 come out as zeros.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from lowprec.formats import Format, get
from lowprec.quant import exact, pow2_bf16

SCALE_RULES = ("fp32", "pow2_floor", "pow2_ceil", "pow2_nearest", "pow2_ceil_bf16", "floor_x4/3", "quest")
# Rules whose scale comes from another statistic of the group than its amax (``group_statistic``).
# "quest": QuEST's MXFP4 scale as Quartet's kernel computes it (IST-DASLab/Quartet,
# ``mxfp4_forward_kernel`` with ``quest=True``): 2**floor(log2(c * std + 1e-8)), std the group's
# standard deviation (mean removed, population), c = 2.92247856 / 6 (the MSE-optimal clip of a
# Gaussian onto E2M1, in standard deviations, over E2M1's max). The power of two is not
# divided by 2**emax: c * std itself is the scale.
STAT_RULES = ("quest",)
QUEST_RATIO = 2.92247856 / 6.0
QUEST_EPS = 1e-8
# Rules that are another rule's scale times a constant: the Quantizer keeps the constant as the
# tensor-level factor of its scales (so GEMMs fold the power of two and scale their output).
# "floor_x4/3": Tseng et al. (arXiv 2502.20586) scale an MXFP4 block by 3/4 before stochastic
# rounding, so that amax / 2**floor(...) in [4, 8) lands in [3, 6) and never clips at 6.
FACTORED_RULES = {"floor_x4/3": ("pow2_floor", 4.0 / 3.0)}
_E8M0 = get("e8m0fnu")


BLOCK_AMAX = ("reduce", "slices")
MAX_SLICED_BLOCK = 64


def amax(xg, reduce_axes, block: str = "reduce") -> jax.Array:
    """Largest finite magnitude over ``reduce_axes`` (kept as size-1 dims), in fp32.

    ``block``: how the amax of a small block along the last axis (MX 32, NVFP4 16, NF4 64) is
    traced: ``"reduce"`` (a reduction; XLA emits it as a pass of its own over the data) or
    ``"slices"`` (an elementwise max over the block's slices, which XLA can fuse into the
    quantization that consumes it: one pass, each element reading its block again from cache).
    Both give the same bits (max is exact); which is faster depends on the compiler and device
    (``experiments.benchmark_quantize`` times both). Other groups always reduce."""
    if block not in BLOCK_AMAX:
        raise ValueError(f"unknown block amax {block!r}; known: {', '.join(BLOCK_AMAX)}")
    a = _finite_magnitude(xg.astype(jnp.float32))
    n = xg.shape[-1] if xg.ndim else 0
    if block == "slices" and tuple(reduce_axes) == (xg.ndim - 1,) and 1 < n <= MAX_SLICED_BLOCK:
        m = a[..., 0:1]
        for j in range(1, n):
            m = jnp.maximum(m, a[..., j:j + 1])
        return m
    return jnp.max(a, axis=reduce_axes, keepdims=True)


def tensor_amax(x, barrier: bool = True) -> jax.Array:
    """Largest finite magnitude of all of ``x``, as fp32 of shape ``(1,) * x.ndim`` (what
    ``amax`` returns for a per-tensor group), computed in ``x``'s own dtype (|x| and max are exact
    in any float dtype), by default behind an optimization barrier. The quantization that divides
    by the scale then shares nothing with this reduction: when it shared the fp32 upcast, XLA on
    a GPU laid the amax out for the transposed FP8 operand a backward GEMM needs and wrote a full
    boolean and a full fp32 copy of the operand before reducing (about 1 ms of a 8192^3 FP8
    layer step on an H200); alone, it is one read of the operand. ``barrier=False`` where the
    amax is only recorded (delayed scaling), so that XLA may fuse it with the quantization."""
    a = _finite_magnitude(lax.optimization_barrier(x) if barrier else x)
    return jnp.max(a).astype(jnp.float32).reshape((1,) * x.ndim)


def _finite_magnitude(x) -> jax.Array:
    """|x| with non-finite entries as 0, in ``x``'s dtype (non-finite values never set a scale)."""
    a = jnp.abs(x)
    return jnp.where(jnp.isfinite(a), a, jnp.zeros((), a.dtype))


def group_statistic(xg, reduce_axes, rule: str) -> jax.Array:
    """The statistic a ``STAT_RULES`` rule scales from, per group (kept as size-1 dims), in fp32.
    ``"quest"``: ``QUEST_RATIO * sqrt(max(E[x^2] - E[x]^2, 0)) + QUEST_EPS`` over the group's
    finite values as the kernel computes it (fp32 sums; the max with 0 is ours: the kernel
    would give NaN where rounding makes the difference negative)."""
    if rule != "quest":
        raise ValueError(f"unknown statistic scale rule {rule!r}; known: {', '.join(STAT_RULES)}")
    x = xg.astype(jnp.float32)
    x = jnp.where(jnp.isfinite(x), x, 0.0)
    n = math.prod(x.shape[a] for a in reduce_axes)
    mean_sq = jnp.sum(x * x, axis=reduce_axes, keepdims=True) / n
    mean = jnp.sum(x, axis=reduce_axes, keepdims=True) / n
    std = jnp.sqrt(jnp.maximum(mean_sq - mean * mean, 0.0))
    return jnp.float32(QUEST_RATIO) * std + jnp.float32(QUEST_EPS)


def check_rule(rule) -> None:
    if isinstance(rule, Format):
        return
    if rule not in SCALE_RULES:
        try:
            get(rule)
        except ValueError:
            raise ValueError(f"unknown scale {rule!r}; known: {', '.join(SCALE_RULES)}, "
                             "or a format name for the scales (e.g. 'e4m3fn', 'e8m0fnu')") from None


def scale_from_amax(am, fmt: Format, rule) -> jax.Array:
    """The scale of each group (same shape as ``am``) under ``rule``.

    - ``fp32``: amax / fmt.max.
    - ``pow2_floor``: 2**(floor(log2 amax) - emax(fmt)), the OCP MX rule (may clip the max).
    - ``pow2_ceil``: the smallest power of two with amax / scale <= fmt.max (never clips).
    - ``pow2_nearest``: amax / fmt.max rounded to the nearest power of two.
    - ``pow2_ceil_bf16``: ``pow2_ceil`` as the FP4 paper's released code computes it, in bf16
      (may halve the scale and clip; see ``quant.pow2_bf16``).
    - ``floor_x4/3``: the ``pow2_floor`` scale times fp32(4/3) (exact; its inverse is exactly
      0.75 / 2**k): Tseng et al.'s MXFP4 scaling before stochastic rounding, which never clips.
    - a Format (e.g. ``"e4m3fn"``): amax / fmt.max rounded onto that format (used under an fp32
      tensor scale for NVFP4-style two-level scaling; see ``two_level_scale``).
    """
    am = am.astype(jnp.float32)
    zero = am == 0
    safe = jnp.where(zero, 1.0, am)
    if rule == "fp32":
        s = exact_div(safe, fmt.max)
    elif rule == "pow2_floor":
        k = _E8M0.encode(_E8M0.quantize(safe, rounding="down")).astype(jnp.int32) - fmt.emax
        s = _E8M0.decode(jnp.clip(k, 0, 254))  # exponent arithmetic on E8M0 codes: exact
    elif rule == "pow2_ceil":
        s = _pow2_ceil(safe, fmt.max)
    elif rule == "pow2_nearest":
        s = _E8M0.quantize(exact_div(safe, fmt.max), rounding="nearest_even")
    elif rule == "pow2_ceil_bf16":
        s = pow2_bf16.scale(safe, fmt.max)
    elif rule == "quest":  # am is the statistic c * std + eps (group_statistic): its power of two below
        s = _E8M0.quantize(am.astype(jnp.float32), rounding="down")
    elif rule in FACTORED_RULES:
        base, factor = FACTORED_RULES[rule]
        s = exact.mul(scale_from_amax(safe, fmt, base), factor)
    else:
        sfmt = get(rule)
        s = sfmt.quantize(exact_div(safe, fmt.max))
        s = jnp.where(exact.is_zero(s), sfmt.tiny if hasattr(sfmt, "tiny") else 1.0, s)  # a subnormal is > 0
    return jnp.where(zero, 1.0, s)


def _pow2_ceil(am, fmax: float) -> jax.Array:
    """The smallest 2**k (k in E8M0's -127..127) with am <= fmax * 2**k, from exponents: with
    am = m * 2**e and fmax = mx * 2**ex (m, mx in [1, 2)), k = e - ex, plus 1 where m > mx."""
    mx, ex = math.frexp(fmax)
    _, n, e, _, _ = exact._fields(am)
    k = e - (ex - 1) + (exact._unit(n) > 2 * mx).astype(jnp.int32)
    return _E8M0.decode(jnp.clip(k + 127, 0, 254))


def two_level_fits(fmt: Format, scale_fmt: Format) -> bool:
    """Whether ``fmt.max * scale_fmt.max``, the tensor scale's divisor, is a finite fp32 number
    (NVFP4: 6 * 448); for E8M0 group scales (max 2**127) it is not, and every scale would be 0."""
    return fmt.max * scale_fmt.max <= float(jnp.finfo(jnp.float32).max)


def two_level_scale(xg, reduce_axes, fmt: Format, scale_fmt: Format,
                    block: str = "reduce") -> tuple[jax.Array, jax.Array]:
    """NVFP4-style scales: an fp32 tensor scale times per-group scales held in ``scale_fmt``.

    Returns ``(group_scale_values, tensor_scale)``; the effective scale is their product and
    ``group_scale_values`` lie on ``scale_fmt``'s grid. ``block``: as for ``amax``.
    """
    am = amax(xg, reduce_axes, block)
    t_am = jnp.max(am)
    tensor_scale = jnp.where(t_am > 0, exact_div(t_am, fmt.max * scale_fmt.max), 1.0)
    group = scale_from_amax(exact_div(am, tensor_scale), fmt, scale_fmt)
    return group, tensor_scale


def combine(group, tensor_scale) -> jax.Array:
    """The scale a two-level group applies: ``group * tensor_scale`` as IEEE fp32 (exact)."""
    return group if tensor_scale is None else exact.mul(group, tensor_scale)


def apply_scale(v, s) -> jax.Array:
    """``v * s`` per group (dequantization), correctly rounded wherever the result is normal."""
    return exact.apply(v, *exact.factors(s))


def apply_inverse(x, s) -> jax.Array:
    """``x`` times ``1/s`` correctly rounded to 24 bits, per group: the scaled input. Exactly
    ``x / s`` for power-of-two scales (MX, E8M0, the FP4 paper's); for other scales this is
    the definition (as a stored inverse scale is in FP8 training), deterministic under jit,
    where XLA would otherwise turn ``x / s`` into ``x * (1/s)`` anyway. One fused pass; a zero
    scale gives zeros (no 0 * inf)."""
    return exact.apply(x, *exact.inverse_factors(s))


def exact_div(a, b) -> jax.Array:
    """``a / b`` correctly rounded (IEEE fp32, subnormal quotients too, on every backend). XLA
    rewrites a division by a constant or by a broadcast into a multiplication by the
    reciprocal, and ``a * (1/b)`` differs from ``a / b``; ``exact.div`` hides the divisor from
    that rewrite. (Meant for scale-sized arrays.)"""
    a = jnp.asarray(a, jnp.float32)
    return exact.div(a, jnp.broadcast_to(jnp.asarray(b, jnp.float32), a.shape))
