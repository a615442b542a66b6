"""fp32 arithmetic on scales that is exact on every backend, flush-to-zero ones included.

XLA:CPU flushes subnormal fp32 operands and results of float operations to zero, so a scale
below 2**-126 (or an inverse scale that is) read as a float is 0 there. Here scales are read
from their bits instead:

- ``div`` and ``mul`` return the IEEE binary32 quotient and product, gradual underflow
  included, whatever the backend does with subnormals;
- ``factors(s)`` and ``inverse_factors(s)`` give two normal fp32 numbers whose product is ``s``
  and ``1/s`` correctly rounded to 24 bits (with an unbounded exponent: ``1/s`` exceeds fp32's
  range for ``s < 2**-128``). Applied one after the other, ``(x * hi) * lo`` is ``x * s``
  correctly rounded wherever that result is a normal number. For ``2**-126 <= |s| < 2**126``
  (every normal-range scale) they are ``(s, 1)`` and ``(1/s, 1)``: the same bits as one multiply.

The helpers work on scale-sized arrays; what runs per element is two multiplies (``apply``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lowprec.formats import _bits

_U32, _I32 = jnp.uint32, jnp.int32
MIN_NORMAL = 2.0 ** -126
_SPLIT = 126  # scales outside [2**-126, 2**126) are split off a factor 2**(+-126)


def pow2(e) -> jax.Array:
    """2.0**e for int32 ``e`` in [-126, 127], built from the exponent bits (exact)."""
    return lax.bitcast_convert_type((jnp.asarray(e, _I32) + 127) << 23, jnp.float32)


def _fields(x):
    """(sign bit, normalized significand N in [2**23, 2**24) as uint32, floor(log2|x|), is_zero,
    is_finite) of fp32 ``x`` from its bits (subnormals included)."""
    sign, sig, ulp_exp, flog2, is_nan, is_inf, is_zero = _bits.split(x)
    top = flog2 - ulp_exp  # position of the leading bit of sig
    n = _bits.shift(sig, 23 - top)
    return sign, n, flog2, is_zero, ~(is_nan | is_inf)


def _unit(n):
    """The normalized significand ``n`` (uint32 in [2**23, 2**24)) as a float in [1, 2)."""
    return n.astype(jnp.float32) * (2.0 ** -23)


def _scale_pow2(v, e):
    """``v * 2**e`` for normal ``v`` near 1 and int32 ``e`` with a normal (or overflowing) result."""
    e = jnp.clip(e, -252, 254)
    e1 = e // 2
    return v * pow2(e1) * pow2(e - e1)


def _product48(x, y):
    """x * y for uint32 x < 2**25, y < 2**24, as (hi, lo) with lo < 2**24 (exact)."""
    x1, x0, y1, y0 = x >> 12, x & 0xFFF, y >> 12, y & 0xFFF
    mid = x1 * y0 + x0 * y1
    lo = x0 * y0 + ((mid & 0xFFF) << 12)
    hi = x1 * y1 + (mid >> 12) + (lo >> 24)
    return hi, lo & 0xFFFFFF


def _shifted48(a, sh):
    """a * 2**sh for uint32 a < 2**25 and int32 sh in [0, 48], as (hi, lo) with lo < 2**24."""
    hi = _bits.shift(a, sh - 24)
    lo = jnp.where(sh >= 24, _U32(0), _bits.shift(a, sh) & 0xFFFFFF)
    return hi, lo


def _compare(left, right):
    """-1, 0 or 1 as the 48-bit number ``left`` (hi, lo) is below, equal to or above ``right``."""
    (lh, ll), (rh, rl) = left, right
    gt = (lh > rh) | ((lh == rh) & (ll > rl))
    lt = (lh < rh) | ((lh == rh) & (ll < rl))
    return gt.astype(_I32) - lt.astype(_I32)


def _subnormal(sign, v, t, tie_side):
    """The fp32 subnormal (or 0, or 2**-126) nearest to ``v * 2**(t - 149)``, ties to even.

    ``v`` is the exact value rounded to 24 bits, ``v * 2**t`` < 2**23; rounding ``v`` again
    would be a double rounding, so where ``v * 2**t`` is a midpoint of the subnormal grid,
    ``tie_side(kf, t)`` (the sign of exact value minus that midpoint) decides."""
    w = v * pow2(jnp.clip(t, -3, 23))  # exact: a power of two within the normal range
    kf = jnp.floor(w)
    frac = w - kf
    k = kf.astype(_U32)
    side = tie_side(k, t)
    up = (frac > 0.5) | ((frac == 0.5) & ((side > 0) | ((side == 0) & ((k & 1) == 1))))
    k = jnp.where(t < -3, _U32(0), k + up.astype(_U32))
    return lax.bitcast_convert_type(k | (sign << 31), jnp.float32)


def div(a, b) -> jax.Array:
    """IEEE fp32 ``a / b``, correctly rounded, gradual underflow included, on every backend.

    Normal operands with a normal quotient take one division (hidden from XLA's rewrite into a
    multiplication by the reciprocal, which rounds twice); the rest are computed from the bits."""
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    plain = a / lax.optimization_barrier(b)
    sa, na, ea, za, fa = _fields(a)
    sb, nb, eb, zb, fb = _fields(b)
    sign = sa ^ sb
    v = _unit(na) / lax.optimization_barrier(_unit(nb))  # A/B rounded to 24 bits, in (1/2, 2]
    e = ea - eb
    ev = e + jnp.where(v < 1, -1, jnp.where(v >= 2, 1, 0))
    normal = _scale_pow2(v, e)
    normal = jnp.where(sign == 1, -normal, normal)

    def tie_side(k, t):  # sign of A/B * 2**t - (k + 1/2), as A * 2**(t+1) vs (2k+1) * B
        n = 2 * k + 1
        nn = jnp.where(t + 1 < 0, 2 * n, n)
        return _compare(_shifted48(na, jnp.maximum(t + 1, 0)), _product48(nn, nb))

    sub = _subnormal(sign, v, e + 149, tie_side)
    ext = jnp.where(ev >= -126, normal, sub)
    edge = fa & fb & ~za & ~zb & ((_is_subnormal(a) | _is_subnormal(b)) | (jnp.abs(plain) < MIN_NORMAL))
    signed_zero = lax.bitcast_convert_type(sign << 31, jnp.float32)
    out = jnp.where(edge, ext, plain)
    return jnp.where(za & ~zb & fb, signed_zero, out)


def mul(a, b) -> jax.Array:
    """IEEE fp32 ``a * b``, correctly rounded, gradual underflow included, on every backend."""
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    plain = a * b
    sa, na, ea, za, fa = _fields(a)
    sb, nb, eb, zb, fb = _fields(b)
    sign = sa ^ sb
    v = _unit(na) * _unit(nb)  # A*B rounded to 24 bits, in [1, 4)
    e = ea + eb
    ev = e + jnp.where(v >= 4, 2, jnp.where(v >= 2, 1, 0))
    normal = _scale_pow2(v, e)
    normal = jnp.where(sign == 1, -normal, normal)

    def tie_side(k, t):  # sign of A*B * 2**(t-46) - (k + 1/2), as A*B vs (2k+1) * 2**(45-t)
        return -_compare(_shifted48(2 * k + 1, 45 - t), _product48(na, nb))

    sub = _subnormal(sign, v, e + 149, tie_side)
    ext = jnp.where(ev >= -126, normal, sub)
    edge = fa & fb & ~za & ~zb & ((_is_subnormal(a) | _is_subnormal(b)) | (jnp.abs(plain) < MIN_NORMAL))
    return jnp.where(edge, ext, plain)


def _is_subnormal(x):
    bits = lax.bitcast_convert_type(x, _U32) & _bits.MAG_MASK
    return (bits != 0) & (bits < 0x800000)


def _normalized(s):
    """(s_n, k) with ``s = s_n * 2**k`` exactly, k in {-126, 0, 126}: s_n = s for
    2**-126 <= |s| < 2**126 (and 0, inf, NaN), else s_n within [2**-23, 4)."""
    s = jnp.asarray(s, jnp.float32)
    bits = lax.bitcast_convert_type(s, _U32)
    field = (bits >> 23) & 0xFF
    man = (bits & 0x7FFFFF).astype(_I32).astype(jnp.float32) * (2.0 ** -23)  # |s| * 2**126 if subnormal
    small = (field == 0) & ((bits & 0x7FFFFF) != 0)
    large = (field >= 127 + _SPLIT) & (field < 255)
    s_n = jnp.where(small, jnp.where((bits >> 31) == 1, -man, man), jnp.where(large, s * 2.0 ** -_SPLIT, s))
    return s_n, jnp.where(small, -_SPLIT, jnp.where(large, _SPLIT, 0))


def factors(s) -> tuple[jax.Array, jax.Array]:
    """(hi, lo), normal, with ``hi * lo == s`` exactly and lo a power of two (1 in the normal range)."""
    s_n, k = _normalized(s)
    return s_n, pow2(k)


def inverse_factors(s) -> tuple[jax.Array, jax.Array]:
    """(hi, lo), normal, whose product is ``1/s`` rounded to 24 bits; lo a power of two (1 for
    2**-126 <= |s| < 2**126, where hi is the correctly rounded fp32 ``1/s``). A zero scale
    gets the inverse 0, so that a group with that scale quantizes to zeros, never 0 * inf."""
    s_n, k = _normalized(s)
    hi = div(jnp.ones_like(s_n), s_n)
    return jnp.where(s_n == 0, 0.0, hi), pow2(-k)


def apply(x, hi, lo) -> jax.Array:
    """``(x * hi) * lo``: one scale (or inverse) applied as its two factors, per element."""
    return x * hi * lo
