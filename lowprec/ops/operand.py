"""A tensor made ready for one GEMM: quantized with its role's Quantizer, its scales bound to
the GEMM's contraction axes, and split into the values the GEMM multiplies and the scale
applied to the GEMM's output."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lowprec.ops import native
from lowprec.quant import Quantizer

_FACTORABLE = ("tensor", "axis")


class Operand(NamedTuple):
    """``values * scale`` (``scale`` broadcasts; None means 1) is the tensor a GEMM multiplies.

    Quantized per tensor or per vector, ``values`` are the format's grid values, held in an
    FP8 dtype when that is exact, and ``scale`` is 1 along the quantizer's contraction axes.
    """

    values: jax.Array
    scale: jax.Array | None

    def dequantize(self) -> jax.Array:
        v = self.values.astype(jnp.float32)
        return v if self.scale is None else v * self.scale


def bind(q: Quantizer, contraction: tuple[int, ...]) -> Quantizer:
    """``q`` with its vector/block granularity running along ``contraction``."""
    return q.replace(granularity=q.granularity.along(contraction))


def quantize(x, q: Quantizer | None, contraction, key, dtype) -> tuple[Operand, jax.Array | None]:
    """(operand, effective scale per group) of ``x`` for a GEMM contracting ``contraction``.

    Unquantized operands are cast to ``dtype``. Grid values are bit-identical to ``q(x, key)``
    divided by its scales: the same scales and the same rounding onto the format.
    """
    if q is None:
        return Operand(x.astype(dtype), None), None
    q = bind(q, contraction)
    qt = q.quantize(x, key=key)
    group, ts = qt.group_scales(), qt.tensor_scale
    s = group if ts is None else group * ts
    xg, _ = q.granularity.to_groups(x.astype(jnp.float32))
    if q.rounding == "stochastic":
        unit = q.format.decode(qt.codes)
    else:  # the same rounding quantize() applied; its codes are then dead code under jit
        unit = q.format.quantize(xg / s, q.rounding, overflow=q.overflow)
    if q.granularity.kind in _FACTORABLE:
        return Operand(unit.astype(_storage_dtype(q, dtype)), s), s
    values = q.granularity.from_groups(unit * group, x.shape).astype(dtype)
    return Operand(values, None if ts is None else ts.reshape((1,) * x.ndim)), s


def scaled_input(x, q: Quantizer, s) -> jax.Array:
    """``x`` divided by its scales (what the format rounded), in ``x``'s layout."""
    xg, _ = q.granularity.to_groups(x.astype(jnp.float32))
    return q.granularity.from_groups(xg / s, x.shape)


def derivative(x, q: Quantizer, s) -> jax.Array | None:
    """The estimator's derivative at ``x`` (None for the identity, STE)."""
    if not q.estimator.needs_input:
        return None
    return q.estimator.derivative(scaled_input(x, q, s), q.format)


def _storage_dtype(q: Quantizer, dtype):
    fp8 = native.fp8_dtype_for(q.format)
    if fp8 is not None:
        return native.FP8_DTYPES[fp8]
    return dtype if native.exact_in(q.format, dtype) else jnp.float32
