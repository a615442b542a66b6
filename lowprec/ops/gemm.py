"""One GEMM on two prepared operands: on FP8 tensor cores when both are exact FP8 values with
scales outside the contraction, else simulated in the compute dtype with the same products.

Scales that are constant along the contraction (per tensor, per row of the activation, per
column of the weight) are applied to the f32 result; scales that vary along it (blocks, or a
forward operand reused in a backward GEMM that contracts another axis) are multiplied into the
operand first ("folded").

The FP8 patterns follow what XLA's GEMM rewriter turns into cuBLASLt's FP8 GEMM: with per-tensor
scales, FP8 operands dequantized in f32 right before the dot (the scalar scales become the
GEMM's scale arguments and the output is written in its final dtype); with per-row/column
scales, which cuBLASLt cannot take, the dot of the FP8 operands themselves in the
(batch, free, contracted) layout, its f32 result scaled afterwards.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from lowprec.ops import dims, native
from lowprec.ops.operand import Operand


def gemm(a: Operand, b: Operand, dn: dims.DimensionNumbers, *, role: str, compute_dtype, accum_dtype,
         native_fp8: str, precision=None, out_dtype=None):
    """``a x b`` in dot_general's output layout (batch, a free, b free), scales applied.

    The result has ``out_dtype`` when given and no scale remains to be applied after the GEMM
    (a GEMM accumulates narrow dtypes in f32 on every XLA backend and writes ``out_dtype``
    directly), else f32 (scaled) or ``accum_dtype``.
    """
    (ac, bc), (ab, bb) = dn
    a, b = _fold(a, ac, compute_dtype), _fold(b, bc, compute_dtype)
    path, reason = native.choose(a.values.dtype, b.values.dtype, native_fp8)
    native.log_path(role, a.values, b.values, path, reason)
    if path == "native_fp8" and a.scale.size == 1 and b.scale.size == 1:
        return _fp8_dot(a, b, dn, out_dtype or accum_dtype, dequantize=True)
    unscaled = a.scale is None and b.scale is None
    result_dtype = out_dtype if unscaled and out_dtype is not None else accum_dtype
    if path == "native_fp8":
        acc = _fp8_dot(a, b, dn, accum_dtype, dequantize=False)
    else:
        dtype = _simulation_dtype(compute_dtype, result_dtype)
        acc = lax.dot_general(a.values.astype(dtype), b.values.astype(dtype), dn, precision=precision,
                              preferred_element_type=result_dtype)
    if unscaled:
        return acc
    y = acc.astype(jnp.float32)
    n_af = a.values.ndim - len(ac) - len(ab)
    n_bf = b.values.ndim - len(bc) - len(bb)
    if a.scale is not None:
        y = y * dims.scale_to_output(a.scale, ac, ab, "lhs", n_bf)
    if b.scale is not None:
        y = y * dims.scale_to_output(b.scale, bc, bb, "rhs", n_af)
    return y


def _simulation_dtype(compute_dtype, result_dtype):
    """The operand dtype of a simulated GEMM. XLA:CPU computes narrow dots in f32 anyway (same
    results) and lacks some narrow-in, wide-out dots, so there such operands go in widened."""
    if jax.default_backend() == "cpu" and jnp.finfo(result_dtype).bits > jnp.finfo(compute_dtype).bits:
        return result_dtype
    return compute_dtype


def _fold(op: Operand, contract, compute_dtype) -> Operand:
    """Multiplies the scale into the values when the GEMM cannot apply it to its output, or
    when the values are not exact in an FP8 dtype or the compute dtype."""
    if op.scale is None:
        return op
    along = any(op.scale.shape[d] != 1 for d in contract)
    exact = op.values.dtype == jnp.dtype(compute_dtype) or op.values.dtype.name in native.FP8_DTYPES
    if along or not exact:
        return Operand(op.dequantize().astype(compute_dtype), None)
    return op


def _fp8_dot(a: Operand, b: Operand, dn, result_dtype, *, dequantize: bool):
    """The FP8 operands in the layout cuBLASLt's FP8 GEMM takes, (batch, free, contracted) for
    both (A x B^T), optionally dequantized in f32 by their scalar scales; the result comes back
    in dot_general's output layout."""
    (ac, bc), (ab, bb) = dn
    af, bf = dims.free(a.values.ndim, ac, ab), dims.free(b.values.ndim, bc, bb)
    batch = tuple(a.values.shape[d] for d in ab)
    lead = (math.prod(batch),) if batch else ()
    operands = []
    for op, order, free, contract in ((a, ab + af + ac, af, ac), (b, bb + bf + bc, bf, bc)):
        rows = math.prod(op.values.shape[d] for d in free)
        depth = math.prod(op.values.shape[d] for d in contract)
        v = op.values.transpose(order).reshape(lead + (rows, depth))
        operands.append(v.astype(jnp.float32) * op.scale.reshape(()) if dequantize else v)
    nd = len(lead) + 2
    gemm_dn = (((nd - 1,), (nd - 1,)), ((0,), (0,)) if batch else ((), ()))
    out = lax.dot_general(*operands, gemm_dn, preferred_element_type=result_dtype)
    return out.reshape(batch + tuple(a.values.shape[d] for d in af) + tuple(b.values.shape[d] for d in bf))
