"""One GEMM on two prepared operands: on FP8 tensor cores when both are exact FP8 values with
scales outside the contraction, else simulated in the compute dtype with the same products.

Where the scales go:
- scales that vary along the contraction (blocks, or a forward operand reused in a backward
  GEMM that contracts another axis) are multiplied into the operand first ("folded");
- in a simulated GEMM, power-of-two scales are folded too: the product is exact and the
  operand is cast to the compute dtype anyway;
- the others (per tensor, per row of the activation, per column of the weight) multiply the
  GEMM's result. When all of them are powers of two the GEMM writes the output dtype directly
  and the scaling stays exact in it; otherwise the result is f32.

The FP8 pattern is the one XLA's GEMM rewriter turns into cuBLASLt's FP8 GEMM
(``__cublas$lt$matmul$f8``): a dot_general of the FP8 operands themselves, both laid out
(batch, free, contracted) (A x B^T), with the scales applied to its result, a scalar one as
a single multiply that the rewriter can fold into the GEMM. (Dequantizing transposed FP8
operands in f32 right before the dot instead left an H100 running an f32 GEMM.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from lowprec.ops import dims, native
from lowprec.ops.operand import Operand


def gemm(a: Operand, b: Operand, dn: dims.DimensionNumbers, *, role: str, compute_dtype, accum_dtype,
         native_fp8: str, precision=None, out_dtype=None, fp8_transposes: str = "fused"):
    """``a x b`` in dot_general's output layout (batch, a free, b free), scales applied.

    The result has ``out_dtype`` when given and every remaining scale is a power of two (a GEMM
    accumulates narrow dtypes in f32 on every XLA backend and writes ``out_dtype`` directly);
    else it is f32 when scaled, ``accum_dtype`` when not.
    """
    (ac, bc), (ab, bb) = dn
    a, b = _fold(a, ac, compute_dtype), _fold(b, bc, compute_dtype)
    path, reason = native.choose(a.values.dtype, b.values.dtype, native_fp8)
    native.log_path(role, a.values, b.values, path, reason)
    if path != "native_fp8":
        a, b = _fold_pow2(a, compute_dtype), _fold_pow2(b, compute_dtype)
    exact = all(op.scale is None or op.pow2 for op in (a, b))
    result_dtype = out_dtype if out_dtype is not None and exact else accum_dtype
    if path == "native_fp8":
        acc = _fp8_dot(a, b, dn, result_dtype, fp8_transposes)
    else:
        dtype = _simulation_dtype(compute_dtype, result_dtype)
        acc = lax.dot_general(native.widen(a.values, dtype), native.widen(b.values, dtype), dn, precision=precision,
                              preferred_element_type=result_dtype)
    return _scale_result(acc, a, b, dn, exact)


def _scale_result(acc, a: Operand, b: Operand, dn, exact: bool):
    """The GEMM's result times the operands' remaining scales (one multiply for scalars)."""
    scales = [op.scale for op in (a, b) if op.scale is not None]
    if not scales:
        return acc
    y = acc if exact else acc.astype(jnp.float32)
    if all(s.size == 1 for s in scales):
        return y * math.prod(s.reshape(()) for s in scales).astype(y.dtype)
    (ac, bc), (ab, bb) = dn
    n_af, n_bf = a.values.ndim - len(ac) - len(ab), b.values.ndim - len(bc) - len(bb)
    if a.scale is not None:
        y = y * dims.scale_to_output(a.scale, ac, ab, "lhs", n_bf).astype(y.dtype)
    if b.scale is not None:
        y = y * dims.scale_to_output(b.scale, bc, bb, "rhs", n_af).astype(y.dtype)
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
        return Operand(op.dequantize().astype(compute_dtype))
    return op


def _fold_pow2(op: Operand, compute_dtype) -> Operand:
    """Folds power-of-two scales into values bound for a simulated GEMM (exact where the compute
    dtype has f32's exponent range, e.g. bf16: FP8 values times 2**k stay representable)."""
    if op.scale is None or not op.pow2 or jnp.finfo(compute_dtype).maxexp < jnp.finfo(jnp.float32).maxexp:
        return op
    return Operand(op.dequantize().astype(compute_dtype))


def _in_layout(op: Operand, perm: tuple, transposes: str):
    """``op.values`` transposed by ``perm`` (nothing when it is the identity): the operand's own
    ``transposed`` layout when it is that one (``"pallas"``), else by XLA: ``"fused"`` leaves
    XLA to fuse the transpose into the quantization that produced the values; ``"separate"``
    puts an optimization barrier first (the quantization writes the FP8 values as they are, a
    plain 1-byte transpose follows). Same bits every way."""
    x = op.values
    if perm == tuple(range(x.ndim)):
        return x
    made = op.in_layout(perm)
    if made is not None:
        return made
    if transposes == "separate":
        x = lax.optimization_barrier(x)
    return x.transpose(perm)


def _fp8_dot(a_op: Operand, b_op: Operand, dn, result_dtype, transposes: str = "fused"):
    """dot_general on FP8 operands in the layout cuBLASLt's FP8 GEMM takes: both operands
    (batch, free, contracted), i.e. A x B^T, then reshaped to dot_general's output layout."""
    (ac, bc), (ab, bb) = dn
    a, b = a_op.values, b_op.values
    af, bf = dims.free(a.ndim, ac, ab), dims.free(b.ndim, bc, bb)
    batch = tuple(a.shape[d] for d in ab)
    lead = (math.prod(batch),) if batch else ()
    a3 = _in_layout(a_op, ab + af + ac, transposes).reshape(lead + (math.prod(a.shape[d] for d in af), -1))
    b3 = _in_layout(b_op, bb + bf + bc, transposes).reshape(lead + (math.prod(b.shape[d] for d in bf), -1))
    nd = a3.ndim
    gemm_dn = (((nd - 1,), (nd - 1,)), ((0,), (0,)) if batch else ((), ()))
    out = lax.dot_general(a3, b3, gemm_dn, preferred_element_type=result_dtype)
    return out.reshape(batch + tuple(a.shape[d] for d in af) + tuple(b.shape[d] for d in bf))
