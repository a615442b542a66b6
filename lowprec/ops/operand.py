"""A tensor made ready for one GEMM: quantized with its role's Quantizer, its scales bound to
the GEMM's contraction axes, and split into the values the GEMM multiplies and the scale
applied to the GEMM's output."""

from __future__ import annotations

import dataclasses
import logging
import math

import jax
import jax.numpy as jnp

from lowprec.ops import cast_transpose, native
from lowprec.quant import Quantizer, scaling

logger = logging.getLogger(__name__)
_logged: set = set()

_FACTORABLE = ("tensor", "axis")
_POW2_RULES = ("pow2_floor", "pow2_ceil", "pow2_nearest", "e8m0fnu")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Operand:
    """``values * scale`` (``scale`` broadcasts; None means 1) is the tensor a GEMM multiplies.

    Quantized per tensor or per vector, ``values`` are the format's grid values, held in an
    FP8 dtype when that is exact, and ``scale`` is 1 along the quantizer's contraction axes.
    ``pow2``: every scale is a power of two, so multiplying by it is exact.
    ``transposed``: when not None, the same values in the operand's other GEMM layout: ``values``
    viewed as 2-D with its first ``split`` dims as rows, transposed (see ``ops.cast_transpose``);
    ``amax``: the input's largest finite magnitude, when the same kernel recorded it.
    """

    values: jax.Array
    scale: jax.Array | None = None
    pow2: bool = dataclasses.field(default=False, metadata=dict(static=True))
    transposed: jax.Array | None = None
    split: int = dataclasses.field(default=0, metadata=dict(static=True))
    amax: jax.Array | None = None  # the input's largest finite magnitude, where the kernel recorded it

    def in_layout(self, perm: tuple[int, ...]) -> jax.Array | None:
        """``values.transpose(perm)`` when it is the ``transposed`` layout already, else None."""
        n = self.values.ndim
        if self.transposed is None or perm != tuple(range(self.split, n)) + tuple(range(self.split)):
            return None
        return self.transposed.reshape(tuple(self.values.shape[d] for d in perm))

    def dequantize(self) -> jax.Array:
        v = native.widen(self.values, jnp.float32)
        return v if self.scale is None else v * self.scale


def bind(q: Quantizer, contraction: tuple[int, ...]) -> Quantizer:
    """``q`` with its vector/block granularity running along ``contraction``."""
    return q.replace(granularity=q.granularity.along(contraction))


def quantize(x, q: Quantizer | None, contraction, key, dtype, history=None,
             split: int | None = None, record_amax: bool = False) -> tuple[Operand, jax.Array | None]:
    """(operand, effective scale per group) of ``x`` for a GEMM contracting ``contraction``.

    Unquantized operands are cast to ``dtype``. ``history``: the amax history of a delayed-scaling
    quantizer. Grid values are bit-identical to ``q(x, key)``
    divided by its scales: the same scales and the same rounding onto the format.
    ``split``: also make the operand's other layout (``Operand.transposed``) in the same pass,
    by ``ops.cast_transpose``, where ``cast_transpose_reason`` finds nothing against it (else
    logged once and made the usual way); with ``record_amax`` that kernel also records the
    input's amax in ``Operand.amax`` (else it stays None).
    """
    if q is None:
        return Operand(x.astype(dtype)), None
    q = bind(q, contraction)
    qt = q.quantize(x, key=key, amax_history=history)
    group, ts = qt.group_scales(), qt.tensor_scale
    s = group if ts is None else group * ts
    factorable = q.granularity.kind in _FACTORABLE
    cast = native.cast_dtype_for(q.format) if _castable(q) and factorable else None
    if cast is not None and split is not None:
        why = cast_transpose_reason(x.shape, split, q, s)
        if why is None:
            fp8 = native.FP8_DTYPES[cast]
            # The kernel multiplies by one fp32 inverse: at a scale below 2**-128 (or flushed to 0) 1/s
            # overflows; capped at the fp32 maximum, entries saturate and zeros stay 0 (never inf * 0).
            inv = jnp.minimum(1.0 / s, jnp.finfo(jnp.float32).max)
            out = cast_transpose.cast_transpose(x, inv, fp8, q.format.max, split, amax=record_amax)
            return Operand(out[0], s, True, out[1], split, out[2] if record_amax else None), s
        _log_no_cast_transpose(x.shape, split, why)
    xg, _ = q.granularity.to_groups(x.astype(jnp.float32))
    if cast is not None:  # the same rounding as a saturating convert: cheap, and it fuses into transposes
        unit = scaling.apply_inverse(xg, s)  # not xg / s: 0 / 0 at a scale XLA:CPU flushes
        unit = jnp.clip(unit, -q.format.max, q.format.max).astype(native.FP8_DTYPES[cast])
        return Operand(unit, s, _pow2_scales(q)), s
    if q.rounding == "stochastic":
        unit = q.format.decode(qt.codes)
    else:  # the same rounding quantize() applied; its codes are then dead code under jit
        unit = q.format.quantize(scaling.apply_inverse(xg, s), q.rounding, overflow=q.overflow)
    if factorable:
        return Operand(unit.astype(_storage_dtype(q, dtype)), s, _pow2_scales(q)), s
    values = q.granularity.from_groups(unit * group, x.shape).astype(dtype)
    return Operand(values, None if ts is None else ts.reshape((1,) * x.ndim)), s


def cast_transpose_reason(shape, split: int, q: Quantizer, s) -> str | None:
    """Why ``ops.cast_transpose`` cannot make this FP8 operand's two layouts (None if it can)."""
    if s.size != 1:
        return f"its scale is per {q.granularity.kind}, not per tensor"
    if not _pow2_scales(q):
        return f"its scale ({q.scale}) is not a power of two"
    if not cast_transpose.supported(tuple(shape), split):
        return f"its 2-D view is not a whole number of {cast_transpose.BLOCK}x{cast_transpose.BLOCK} tiles"
    return None


def _log_no_cast_transpose(shape, split, why: str) -> None:
    key = (tuple(shape), split, why)
    if key not in _logged:
        _logged.add(key)
        logger.info("FP8 operand %s: both layouts from XLA, not the cast-transpose kernel: %s", list(shape), why)


def scaled_input(x, q: Quantizer, s) -> jax.Array:
    """``x`` times its inverse scales (what the format rounded), in ``x``'s layout; exact at
    subnormal scales, as the forward pass (``scaling.apply_inverse``)."""
    xg, _ = q.granularity.to_groups(x.astype(jnp.float32))
    return q.granularity.from_groups(scaling.apply_inverse(xg, s), x.shape)


def derivative(x, q: Quantizer, s) -> jax.Array | None:
    """The estimator's derivative at ``x`` (None for the identity, STE)."""
    if not q.estimator.needs_input:
        return None
    return q.estimator.derivative(scaled_input(x, q, s), q.format)


def _castable(q: Quantizer) -> bool:
    return q.rounding == "nearest_even" and q.overflow == "saturate"


def _pow2_scales(q: Quantizer) -> bool:
    """Whether every scale ``q`` applies is a power of two."""
    if q.tensor_scale or q.double_quant is not None:
        return False
    if q.source == "fixed":
        return math.frexp(q.fixed_scale)[0] == 0.5
    return q.scale in _POW2_RULES


def _storage_dtype(q: Quantizer, dtype):
    fp8 = native.fp8_dtype_for(q.format)
    if fp8 is not None:
        return native.FP8_DTYPES[fp8]
    return dtype if native.exact_in(q.format, dtype) else jnp.float32
