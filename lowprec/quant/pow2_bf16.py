"""Power-of-two scales computed in bfloat16, as the FP4 paper's released code computes them.

Azure/MS-AMP's ``ScalingMeta.compute_scaling_factor`` (``msamp/common/tensor/meta.py``), called
on a bf16 amax by ``FP4_QUANTIZER.quantize_simulate_fp4_in_bf16``, evaluates the multiplier
``sf = 2**floor(log2(max / amax))`` in bf16. It is a TorchScript function, and TorchScript
compiles ``float / Tensor`` as ``torch.reciprocal(amax) * max`` (its builtin ``div(Scalar,
Tensor)``, ``torch/csrc/jit/frontend/builtin_functions.cpp``; eager torch's ``__rtruediv__`` is
the same), so the quotient is ``bf16(bf16(1 / amax) * max)``: the reciprocal (an fp32
division) and the product are each rounded to bf16, then ``log2`` of it is rounded to bf16 before
the floor. Exactly, ``1 / sf`` is ``pow2_ceil``'s scale; the roundings make ``sf`` twice that
where the quotient lies just below a power of two or its log2 just below an integer (e.g.
quotients 254 and 255, whose log2 rounds to 8): that group's largest magnitudes then land
slightly above ``max`` (by at most a factor of 2**(1/16) for quotients in [2**-15, 2**16]) and
saturate. (One correctly rounded division ``bf16(max / amax)`` would give another multiplier
for 24 of the bf16 amax values in [2**-125, 2**126), e.g. 0.0236816: quotient 253, not 254.)

Here the result is computed exactly from the bits, without a logarithm: bf16(log2 q) reaches
the next integer exactly when q's 7-bit mantissa is at least a threshold that depends on q's
exponent (a table built once in float64). Every log2 of a bf16 value lies at least 10 fp32
ulps away from the bf16 rounding boundary that decides it, so a log2f accurate to a few ulps
(CUDA's) gives the same answer.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from lowprec.formats import get
from lowprec.quant import exact

_E8M0 = get("e8m0fnu")
_EMIN, _EMAX = -126, 127  # exponents of normal bf16 quotients


def _boundary_gap(n: int) -> float:
    """How far below the integer ``n`` the bf16 rounding boundary toward ``n - 1`` lies."""
    if n == 0:
        return 0.0  # bf16 resolves values near 0 finely: log2 q < 0 never rounds up to 0
    p = math.floor(math.log2(abs(n)))
    if n > 0 and 2 ** p == n:
        return 2.0 ** (p - 9)  # below a power of two the spacing halves
    return 2.0 ** (p - 8)


def _thresholds() -> np.ndarray:
    """For each exponent e of q = (1 + j/128) * 2**e: the smallest j >= 1 whose bf16(log2 q)
    rounds up to e + 1 (128: none)."""
    out = np.full(_EMAX - _EMIN + 1, 128, np.int32)
    for e in range(_EMIN, _EMAX + 1):
        gap = _boundary_gap(e + 1)
        ups = [j for j in range(1, 128) if math.log2(1 + j / 128) >= 1 - gap]
        if ups:
            out[e - _EMIN] = ups[0]
    return out


_THRESHOLD = _thresholds()


def multiplier_exponent(amax, fmax: float) -> jnp.ndarray:
    """``floor(bf16(log2(bf16(bf16(1 / bf16(amax)) * fmax))))`` as int32, for finite ``amax > 0``."""
    a = _bf16(amax.astype(jnp.float32))
    r = _bf16(exact.div(jnp.ones_like(a), a))  # torch.reciprocal in bf16: an fp32 division, then bf16
    q = (r * jnp.float32(fmax)).astype(jnp.bfloat16)  # the product is exact in fp32 (fmax: 6 or 7)
    bits = lax.bitcast_convert_type(q, jnp.uint16).astype(jnp.int32)
    e = ((bits >> 7) & 0xFF) - 127
    j = bits & 0x7F
    table = jnp.asarray(_THRESHOLD)
    up = (j > 0) & (j >= table[jnp.clip(e - _EMIN, 0, table.size - 1)])
    return e + up.astype(jnp.int32)


def _bf16(x) -> jnp.ndarray:
    """fp32 ``x`` rounded to bf16 (nearest-even), as fp32, through the bits: a round trip
    ``astype(bfloat16).astype(float32)`` may be dropped by XLA (excess precision)."""
    bits = lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16).astype(jnp.uint32) << 16
    return lax.bitcast_convert_type(bits, jnp.float32)


def scale(amax, fmax: float) -> jnp.ndarray:
    """The scale ``1 / sf`` (what lowprec divides by), a power of two in E8M0's range, for finite
    positive amax; the released code's for every bf16 amax in [2**-125, 2**126)
    (``tests/ops/test_fp4_msamp.py``). Below 2**-125 the code's multiplier is 2**128 or its
    reciprocal overflows: infinite in bf16 (its outputs are then inf or NaN); here it is E8M0's
    smallest scale. From 2**126 the bf16 reciprocal is subnormal, which XLA:CPU flushes to 0."""
    n = multiplier_exponent(amax, fmax)
    return _E8M0.decode(jnp.clip(127 - n, 0, 254))
