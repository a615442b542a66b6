"""Exact fp32 bit arithmetic shared by every format: rounding onto power-of-two grids.

Everything here works on the uint32 bit patterns of fp32 values, never on float arithmetic,
so results are bit-exact on every backend (CPU flush-to-zero modes cannot touch subnormals)
and rounding ties are decided exactly.

A value is handled as ``sign, sig, ulp_exp`` with ``|x| = sig * 2**ulp_exp`` and ``sig`` an
integer below 2**24. Rounding onto a grid whose local step is ``2**qe`` drops
``shift = qe - ulp_exp`` low bits of ``sig``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# nearest_up: to nearest, ties toward +inf (round half up; the FP4 paper's E2M1 kernel).
# nearest_zero: to nearest, ties toward zero (Quartet's MXFP4 kernel compares with strict ``>``).
ROUNDING_MODES = ("nearest_even", "nearest_away", "nearest_up", "nearest_zero", "toward_zero", "down", "up",
                  "stochastic")
NEAREST = ("nearest_even", "nearest_away", "nearest_up", "nearest_zero")

_U32 = jnp.uint32
_I32 = jnp.int32
MAG_MASK = 0x7FFFFFFF
EXP_INF = 0x7F800000
MAX_RANDOM_BITS = 31


def check_rounding(rounding: str, key, random_bits: int | None = None) -> None:
    """Validates a rounding request; stochastic rounding needs an explicit PRNG key."""
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding {rounding!r}; known: {', '.join(ROUNDING_MODES)}")
    if rounding == "stochastic" and key is None:
        raise ValueError("rounding='stochastic' needs a PRNG key: pass key=jax.random.key(...)")
    if random_bits is not None and not 1 <= random_bits <= MAX_RANDOM_BITS:
        raise ValueError(f"random_bits must be in 1..{MAX_RANDOM_BITS}, got {random_bits}")


def to_f32(x: jax.Array) -> jax.Array:
    """Exact upcast of a float array (fp32, bf16, fp16) to fp32."""
    if x.dtype == jnp.float32:
        return x
    if x.dtype == jnp.bfloat16:  # exact by construction, immune to flush-to-zero
        bits = lax.bitcast_convert_type(x, jnp.uint16).astype(_U32) << 16
        return lax.bitcast_convert_type(bits, jnp.float32)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.float32)
    raise TypeError(f"expected a floating-point array, got dtype {x.dtype}")


def split(x32: jax.Array):
    """fp32 -> (sign bit, sig, ulp_exp, floor_log2|x|, is_nan, is_inf, is_zero)."""
    bits = lax.bitcast_convert_type(x32, _U32)
    sign = bits >> 31
    mag = bits & MAG_MASK
    e = (mag >> 23).astype(_I32)
    man = mag & 0x7FFFFF
    normal = e > 0
    sig = jnp.where(normal, man | 0x800000, man)
    ulp_exp = jnp.where(normal, e - 150, -149)
    flog2 = ulp_exp + ilog2(sig)
    return sign, sig, ulp_exp, flog2, (e == 255) & (man != 0), mag == EXP_INF, mag == 0


def ilog2(v):
    """floor(log2(v)) of uint32 ``v`` <= 2**24 (exact int->float conversion); -1 for 0.

    Read off the float exponent instead of counting leading zeros, so it lowers everywhere.
    """
    e = (lax.bitcast_convert_type(v.astype(jnp.float32), _U32) >> 23).astype(_I32) - 127
    return jnp.where(v == 0, -1, e)


def shl(v, n):
    return v << jnp.clip(n, 0, 31).astype(_U32)


def shr(v, n):
    return v >> jnp.clip(n, 0, 31).astype(_U32)


def shift(v, n):
    """``v * 2**n`` for uint32 ``v`` and an int32 array ``n`` of either sign (exact when it fits)."""
    return jnp.where(n >= 0, shl(v, n), shr(v, -n))


def round_sig(sig, shift, sign, rounding: str, rand=None, random_bits: int | None = None):
    """Rounds ``sig / 2**shift`` to an integer (``shift`` may be <= 0: exact, no change)."""
    s = jnp.maximum(shift, 0)
    kept = shr(sig, s)
    rem = sig & (shl(_U32(1), s) - 1)  # shifts clip at 31 > 24 bits of sig: exact
    inexact = rem != 0
    if rounding == "toward_zero":
        up = jnp.zeros_like(inexact)
    elif rounding == "up":
        up = inexact & (sign == 0)
    elif rounding == "down":
        up = inexact & (sign == 1)
    elif rounding in NEAREST:
        half = shl(_U32(1), s - 1)
        above = rem > half
        tie = (rem == half) & (s > 0)
        tie_up = {"nearest_even": (kept & 1) == 1, "nearest_away": jnp.ones_like(tie),
                  "nearest_up": sign == 0, "nearest_zero": jnp.zeros_like(tie)}[rounding]  # on magnitudes: +inf is up for x > 0 only
        up = above | (tie & tie_up)
    elif rounding == "stochastic":
        nbits = MAX_RANDOM_BITS if random_bits is None else random_bits
        r = jnp.minimum(s, nbits)
        # Keep the r leading bits of the remainder and add r uniform random bits: the carry
        # happens with probability rem / 2**s (exactly, when r == s).
        rem_top = shr(rem, s - r)
        noise = rand & (shl(_U32(1), r) - 1)
        up = (rem_top + noise) >= shl(_U32(1), r)
        up = up & (s > 0)
    else:
        raise ValueError(f"unknown rounding {rounding!r}; known: {', '.join(ROUNDING_MODES)}")
    return jnp.where(shift > 0, kept + up.astype(_U32), sig)


def join(sign, rs, qe) -> jax.Array:
    """Builds fp32 from ``(-1)**sign * rs * 2**qe`` (exact: the caller guarantees it fits).

    ``rs`` < 2**25 and ``qe >= -149``; zero ``rs`` gives a signed zero.
    """
    top = ilog2(rs)
    ex = qe + top
    man_n = jnp.where(top <= 23, shl(rs, 23 - top), shr(rs, top - 23)) & 0x7FFFFF
    normal_bits = (ex + 127).astype(_U32) << 23 | man_n
    sub_bits = shl(rs, qe + 149)
    mag = jnp.where(rs == 0, _U32(0), jnp.where(ex >= -126, normal_bits, sub_bits))
    return lax.bitcast_convert_type(mag | (sign.astype(_U32) << 31), jnp.float32)


def random_bits_like(key, shape) -> jax.Array:
    """Uniform uint32 words for stochastic rounding."""
    return jax.random.bits(key, shape, dtype=_U32)


def round_half(v, rounding: str):
    """Rounds non-negative fp32 ``v`` < 2**22 to an integer, ties to even or away from zero.

    ``v + 0.5`` is exact for 0.5 <= v < 2**22; below 0.5 the answer is 0 (``v + 0.5`` would
    round up to 1 for the float just below 0.5). Written with floor (not ``round``) so that
    it lowers everywhere, fused kernels included.
    """
    k = jnp.where(v < 0.5, 0.0, jnp.floor(v + 0.5))
    if rounding == "nearest_even":
        k = jnp.where((k - v == 0.5) & (k - 2.0 * jnp.floor(k * 0.5) == 1.0), k - 1.0, k)
    return k
