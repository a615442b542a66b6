"""A numpy port of the FP4 quantizer and DGE derivative of the FP4 paper's released code.

Ported from reading Azure/MS-AMP at commit 9746ea8 (``msamp/operators/fp4_quantize/
fp4_quantize.py``, ``quantize.cu``, ``msamp/common/tensor/meta.py``, ``cast.py``,
``msamp/megatron/layers.py``); written independently, not copied. Arithmetic follows torch's on
CUDA: a bf16 tensor op computes in fp32 ("opmath") and rounds the result to bf16 (nearest-even),
here ``np.float32`` arithmetic then ``.astype(ml_dtypes.bfloat16)``. Inputs are 2-D or more
(``token_wise``/``channel_wise`` flatten leading dims as the original does).

- ``compute_scaling_factor``: ``ScalingMeta.compute_scaling_factor`` in a given dtype (bf16 for
  the FP4 quantizer, fp32 for the FP8 metas). It is TorchScript, where ``fp_max / amax`` is
  ``torch.reciprocal(amax) * fp_max`` (two roundings).
- ``quantile_clip``: ``FP4_QUANTIZER._apply_quantile_clipping`` (sorted indices
  ``int((1 - t) * n)`` and ``int(t * n)``, Python floats).
- ``quantize_e2m1_kernel``: ``quantize_bf16_kernel``, an if-chain of strict ``<`` tests
  against the E2M1 midpoints (ties go toward +inf; NaN gives 6; zeros are +0).
- ``quantize_simulate_fp4_in_bf16``: the whole simulated quantizer, returning the scaled input
  too (``return_scaled_input_for_bwd``).
- ``dge_derivative``: ``differentiable_quantize_derivative`` (fp32 arithmetic, bf16 output).
- ``cast_e5m2``: ``TypeCast.cast_to_fp8`` to E5M2 with in-time scaling (fp32 power-of-two
  scale from the fp32 amax), dequantized.
- ``linear``: the Megatron hook's forward and backward with FP4 weights (DGE) and activations,
  its GEMMs exact (float64) then rounded to bf16, as an FP8 GEMM with fp32 accumulation
  writing bf16 gives wherever its accumulation is exact.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

BF16 = ml_dtypes.bfloat16
F32 = np.float32
E2M1_VALUES = (-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # else 6
E2M1_MIDPOINTS = (-5.0, -3.5, -2.5, -1.75, -1.25, -0.75, -0.25, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
E5M2_MAX = 57344.0


def bf16(x) -> np.ndarray:
    """fp32 ``x`` rounded to bf16 (nearest-even, as torch's float -> bf16 conversion)."""
    return np.asarray(x, F32).astype(BF16)


def _op(dtype):
    """A torch op's result in ``dtype`` from its fp32 value."""
    return (lambda v: bf16(v)) if dtype == BF16 else (lambda v: np.asarray(v, F32))


def compute_scaling_factor(amax, scale, fp_max: float, margin: int, dtype=BF16) -> np.ndarray:
    """``ScalingMeta.compute_scaling_factor(amax, scale, fp_max, margin)`` with ``amax`` and
    ``scale`` tensors of ``dtype``: each op computed in fp32, its result rounded to ``dtype``."""
    rnd = _op(dtype)
    amax = np.asarray(amax).astype(dtype)
    a = amax.astype(F32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        q = rnd(rnd(F32(1) / a).astype(F32) * F32(fp_max))  # TorchScript: reciprocal(amax) * fp_max
        exp = rnd(np.floor(rnd(np.log2(q.astype(F32))).astype(F32)) - F32(margin))
        sf = rnd(np.round(rnd(np.power(F32(2), np.abs(exp.astype(F32)))).astype(F32)))
        sf = np.where(a > 0, sf, np.asarray(scale).astype(dtype))
        sf = np.where(np.isfinite(a), sf, np.asarray(scale).astype(dtype))
        sf = np.where(exp.astype(F32) < 0, rnd(rnd(F32(1) / sf.astype(F32)).astype(F32) * F32(1)), sf)
    return sf.astype(dtype)


def quantile_clip(x, threshold: float = 0.99, channel_wise: bool = False, token_wise: bool = False):
    """``_apply_quantile_clipping`` of 2-D ``x`` (returns the clamped tensor, x's dtype)."""
    if channel_wise or token_wise:
        axis = 0 if channel_wise else 1
        s = np.sort(x, axis=axis)
        n = s.shape[axis]
        lo = np.take(s, [int((1 - threshold) * n)], axis=axis)
        hi = np.take(s, [int(threshold * n)], axis=axis)
    else:
        s = np.sort(x.astype(F32).reshape(-1))
        n = s.size
        lo, hi = s[int((1 - threshold) * n)], s[int(threshold * n)]
    out = np.minimum(np.maximum(x.astype(F32), np.asarray(lo, F32)), np.asarray(hi, F32))
    return out.astype(x.dtype)


def quantize_e2m1_kernel(v) -> np.ndarray:
    """``quantize_bf16_kernel`` on bf16 ``v``: the first midpoint that ``v`` is strictly below
    picks the value below it; none: 6."""
    v = np.asarray(v, BF16).astype(F32)
    conds = [v < F32(t) for t in E2M1_MIDPOINTS]
    return bf16(np.select(conds, [F32(c) for c in E2M1_VALUES], default=F32(6.0)))


def quantize_simulate_fp4_in_bf16(x, format: str = "e1m2", channel_wise: bool = False, token_wise: bool = False,
                                  outlier_clip: bool = False, clip_threshold: float = 0.99,
                                  residual_compensation: bool = False):
    """``FP4_QUANTIZER.quantize_simulate_fp4_in_bf16`` of bf16 ``x``: (output, scaled input),
    both bf16 in x's shape."""
    x = np.asarray(x, BF16)
    shape = x.shape
    assert not (channel_wise and token_wise)
    if channel_wise or token_wise:
        x = x.reshape(-1, shape[-1])
    residual = None
    if outlier_clip:
        clipped = quantile_clip(x, clip_threshold, channel_wise, token_wise)
        if residual_compensation:
            residual = bf16(x.astype(F32) - clipped.astype(F32))
        x = clipped
    a = np.abs(x)
    if channel_wise:
        amax = a.max(axis=0, keepdims=True)
    elif token_wise:
        amax = a.max(axis=1, keepdims=True)
    else:
        amax = a.max()
    fp_max = 6.0 if format == "e2m1" else 7.0
    sf = compute_scaling_factor(amax, np.ones((1, 1), BF16), fp_max, 0).astype(F32)
    scaled = bf16(x.astype(F32) * sf)
    if format == "e2m1":
        out = quantize_e2m1_kernel(scaled)
    else:
        out = bf16(np.round(scaled.astype(F32)))  # torch.round: half to even, as np.round
    out = bf16(out.astype(F32) / sf)
    if residual is not None:
        out = bf16(out.astype(F32) + residual.astype(F32))
    return out.reshape(shape), scaled.reshape(shape)


def _power_derivative(x, delta: float, k: float, cap: float) -> np.ndarray:
    """The kernel's ``power_derivative``: min(|2x/delta - 1|**(1/k - 1) / k, cap) in fp32."""
    x, k = np.asarray(x, F32), F32(k)
    t = np.abs(F32(2) * x / F32(delta) - F32(1))
    with np.errstate(divide="ignore"):
        return np.minimum(np.power(t, F32(1) / k - F32(1)) / k, F32(cap))


# (lower end inclusive, upper end exclusive, the interval's left end, its width); [4, 6] closed.
_DGE_INTERVALS = ((-4.0, -3.0, -4.0, 1.0), (-3.0, -2.0, -3.0, 1.0), (-2.0, -1.5, -2.0, 0.5),
                  (-1.5, -1.0, -1.5, 0.5), (-1.0, -0.5, -1.0, 0.5), (-0.5, 0.0, -0.5, 0.5),
                  (0.0, 0.5, 0.0, 0.5), (0.5, 1.0, 0.5, 0.5), (1.0, 1.5, 1.0, 0.5), (1.5, 2.0, 1.5, 0.5),
                  (2.0, 3.0, 2.0, 1.0), (3.0, 4.0, 3.0, 1.0))


def dge_derivative(x, k: float = 5.0, cap: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """``differentiable_quantize_derivative`` of bf16 ``x``: (its fp32 value, the bf16 it
    writes). Below -4 the first interval's formula (also below -6), above 6 zero, NaN zero."""
    x = np.asarray(x, BF16).astype(F32)
    conds = [x < F32(-4)] + [(x >= F32(lo)) & (x < F32(hi)) for lo, hi, _, _ in _DGE_INTERVALS]
    conds.append((x >= F32(4)) & (x <= F32(6)))
    with np.errstate(invalid="ignore"):
        vals = [_power_derivative(x + F32(6), 2.0, k, cap)]
        vals += [_power_derivative(x - F32(left), width, k, cap) for _, _, left, width in _DGE_INTERVALS]
        vals.append(_power_derivative(x - F32(4), 2.0, k, cap))
    d = np.select(conds, vals, default=F32(0))
    return d.astype(F32), bf16(d)


def cast_e5m2(x) -> np.ndarray:
    """``TypeCast.cast_to_fp8(x, meta)`` to E5M2 with in-time scaling, dequantized (fp32): the
    fp32 amax, the fp32 power-of-two multiplier, ``x * sf`` cast to E5M2 (nearest-even,
    saturating), times ``1 / sf``."""
    x = np.asarray(x).astype(F32)
    amax = np.abs(x).max()
    sf = compute_scaling_factor(amax, F32(1), E5M2_MAX, 0, dtype=F32)
    v = np.clip(x * sf, -E5M2_MAX, E5M2_MAX).astype(ml_dtypes.float8_e5m2).astype(F32)
    return v * (F32(1) / sf)


def _gemm_bf16(a, b) -> tuple[np.ndarray, np.ndarray]:
    """(bf16 of the exact a @ b, the exact product in float64)."""
    exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    return bf16(exact), exact


def linear(x, w, g, k: float = 5.0, clip_threshold: float = 0.99) -> dict:
    """The FP4 Megatron hook (activation and weight FP4 with DGE) on bf16 ``x`` (tokens, in),
    weight ``w`` (out, in) and output gradient ``g`` (tokens, out). Returns the forward output
    ``y``, ``dx``, the weight gradient ``dw`` as the hook computes it, bf16(bf16(G) * f'), and
    its parts: ``G`` (the exact weight-gradient GEMM, float64), ``dge`` (f' in bf16), the
    quantized operands ``xq``, ``wq``, ``gq`` and the ``products`` of each GEMM (for exactness)."""
    xq, _ = quantize_simulate_fp4_in_bf16(x, "e2m1", token_wise=True, outlier_clip=True,
                                          clip_threshold=clip_threshold)
    wq, w_scaled = quantize_simulate_fp4_in_bf16(w, "e2m1", channel_wise=True)
    y, _ = _gemm_bf16(xq, wq.T)
    gq = cast_e5m2(g)
    dx, _ = _gemm_bf16(gq, wq)
    _, grad_w = _gemm_bf16(gq.T, xq)
    _, d = dge_derivative(w_scaled, k)
    dw = bf16(bf16(grad_w).astype(F32) * d.astype(F32))
    return dict(y=y, dx=dx, dw=dw, G=grad_w, dge=d, xq=xq, wq=wq, gq=gq)
