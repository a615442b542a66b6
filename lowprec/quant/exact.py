"""fp32 arithmetic on scales that is exact on every backend, flush-to-zero ones included.

XLA:CPU flushes subnormal fp32 operands and results of float operations to zero, so a scale
below 2**-126 (or an inverse scale that is) read as a float is 0 there. Here scales are read
from their bits instead:

- ``div`` and ``mul`` return the IEEE binary32 quotient and product, gradual underflow
  included, whatever the backend does with subnormals;
- ``factors(s)`` and ``inverse_factors(s)`` give two normal fp32 numbers whose product is ``s``
  and ``1/s`` correctly rounded to 24 bits (with an unbounded exponent: ``1/s`` exceeds fp32's
  range for ``s < 2**-128``). Applied one after the other, ``(x * hi) * lo`` is ``x * s``
  correctly rounded wherever that result is a normal number (both factors push the same way, so
  the intermediate lies between ``x`` and the result). For ``2**-63 <= |s| < 2**63`` they are
  ``(s, 1)`` and ``(1/s, 1)``: the same bits as one multiply.

The helpers work on scale-sized arrays; what runs per element is two multiplies (``apply``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lowprec.formats import rounding as rnd

_U32, _I32 = jnp.uint32, jnp.int32
MIN_NORMAL = 2.0 ** -126
# Scales outside [2**-63, 2**63) are split off a factor 2**(+-63): the factor applied first
# then stays within 2**+-86 of 1, so a constant that XLA folds into it (a format's decode or
# quantize multiplies by one, e.g. mxint8's 2**-6, and XLA merges it with a broadcast factor)
# cannot push it out of the normal range.
_SPLIT = 63


def pow2(e) -> jax.Array:
    """2.0**e for int32 ``e`` in [-126, 127], built from the exponent bits (exact)."""
    return lax.bitcast_convert_type((jnp.asarray(e, _I32) + 127) << 23, jnp.float32)


def is_zero(x) -> jax.Array:
    """``x == 0`` (either sign) from the bits of fp32 ``x``, subnormals being nonzero on every backend.

    Written as exponent field plus significand field equal to 0: LLVM, which assumes IEEE
    subnormals, turns ``(bits & 0x7FFFFFFF) == 0`` (and the two fields tested apart) back into
    a float comparison, which XLA:CPU's flush-to-zero mode answers as if a subnormal were 0."""
    b = lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), _U32)
    return ((b >> 23) & 0xFF) + (b & 0x7FFFFF) == 0


def _fields(x):
    """(sign bit, normalized significand N in [2**23, 2**24) as uint32, floor(log2|x|), is_zero,
    is_finite) of fp32 ``x`` from its bits (subnormals included)."""
    sign, sig, ulp_exp, flog2, is_nan, is_inf, _ = rnd.split(x)
    zero = is_zero(x)  # not split's: see is_zero
    top = flog2 - ulp_exp  # position of the leading bit of sig
    n = rnd.shift(sig, 23 - top)
    return sign, n, flog2, zero, ~(is_nan | is_inf)


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
    hi = rnd.shift(a, sh - 24)
    lo = jnp.where(sh >= 24, _U32(0), rnd.shift(a, sh) & 0xFFFFFF)
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


@jax.custom_batching.custom_vmap
def _quotient(a, b):
    """``a / b`` as one IEEE division: the divisor behind an optimization barrier, so that XLA
    cannot see it as a constant or a broadcast and multiply by its reciprocal instead."""
    return a / lax.optimization_barrier(b)


@_quotient.def_vmap
def _quotient_vmap(axis_size, in_batched, a, b):
    # Under vmap an unbatched divisor would be broadcast after the barrier (and then rewritten
    # into a reciprocal multiply): broadcast both operands first.
    a, b = (x if batched else jnp.broadcast_to(x, (axis_size,) + x.shape) for x, batched in zip((a, b), in_batched))
    return _quotient(a, b), True


def div(a, b) -> jax.Array:
    """IEEE fp32 ``a / b``, correctly rounded, gradual underflow included, on every backend.

    Normal operands with a normal quotient take one division (hidden from XLA's rewrite into a
    multiplication by the reciprocal, which rounds twice); the rest are computed from the bits."""
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    plain = _quotient(a, b)
    sa, na, ea, za, fa = _fields(a)
    sb, nb, eb, zb, fb = _fields(b)
    sign = sa ^ sb
    v = _quotient(_unit(na), _unit(nb))  # A/B rounded to 24 bits, in (1/2, 2]
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
    b = lax.bitcast_convert_type(x, _U32)
    return (((b >> 23) & 0xFF) == 0) & ~is_zero(x)


def _normalized(s):
    """(s_n, k) with ``s = s_n * 2**k`` exactly, k in {-63, 0, 63}: s_n = s for
    2**-63 <= |s| < 2**63 (and 0, inf, NaN), else s_n within [2**-86, 2**65)."""
    s = jnp.asarray(s, jnp.float32)
    b = lax.bitcast_convert_type(s, _U32)
    field = (b >> 23) & 0xFF
    man = (b & 0x7FFFFF).astype(_I32).astype(jnp.float32) * (2.0 ** -23)  # |s| * 2**126 if subnormal
    sub = jnp.where((b >> 31) == 1, -man, man) * 2.0 ** (_SPLIT - 126)  # s * 2**63, no subnormal operand
    small = (field < 127 - _SPLIT) & ~is_zero(s)
    large = (field >= 127 + _SPLIT) & (field < 255)
    s_n = jnp.where(small, jnp.where(field == 0, sub, s * 2.0 ** _SPLIT), jnp.where(large, s * 2.0 ** -_SPLIT, s))
    return s_n, jnp.where(small, -_SPLIT, jnp.where(large, _SPLIT, 0))


def factors(s) -> tuple[jax.Array, jax.Array]:
    """(hi, lo), normal, with ``hi * lo == s`` exactly and lo a power of two (1 for
    2**-63 <= |s| < 2**63)."""
    s_n, k = _normalized(s)
    return s_n, pow2(k)


def inverse_factors(s) -> tuple[jax.Array, jax.Array]:
    """(hi, lo), normal, whose product is ``1/s`` rounded to 24 bits; lo a power of two (1 for
    2**-63 <= |s| < 2**63, where hi is the correctly rounded fp32 ``1/s``). A zero scale
    gets the inverse 0, so that a group with that scale quantizes to zeros, never 0 * inf."""
    s_n, k = _normalized(s)
    hi = div(jnp.ones_like(s_n), s_n)
    return jnp.where(s_n == 0, 0.0, hi), pow2(-k)


def apply(x, hi, lo) -> jax.Array:
    """``(x * hi) * lo``: one scale (or inverse) applied as its two factors, per element."""
    return x * hi * lo
