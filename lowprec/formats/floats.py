"""Floating-point formats ExMy of any shape that fits an fp32 container."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import lax

from lowprec.formats import rounding as rnd
from lowprec.formats.base import Format

SPECIALS = ("ieee", "fn", "fnuz", "none")


@dataclasses.dataclass(frozen=True)
class FloatFormat(Format):
    """Sign (optional), ``exp_bits`` exponent bits, ``man_bits`` mantissa bits, a bias.

    ``specials``: ``"ieee"`` (top exponent is inf/NaN: e5m2, fp16, bf16), ``"fn"`` (finite;
    the all-ones code is NaN: e4m3fn, e8m0fnu), ``"fnuz"`` (finite; NaN is the negative-zero
    code 0x80, no -0: e4m3fnuz) or ``"none"`` (every code is a number: e2m1fn, e3m2fn).
    ``bias`` defaults to 2**(e-1)-1, or 2**(e-1) for fnuz. ``subnormals=False`` removes the
    subnormal values (inputs below the smallest normal round onto {0, min_normal}).
    ``zero=False`` makes exponent field 0 an ordinary binade (e8m0fnu: no zero, min 2**-127).
    """

    exp_bits: int
    man_bits: int
    bias: int | None = None
    specials: str = "none"
    subnormals: bool = True
    signed: bool = True
    zero: bool = True
    label: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        _check_int("exp_bits", self.exp_bits, 1, 8)
        _check_int("man_bits", self.man_bits, 0, 23)
        if self.specials not in SPECIALS:
            raise ValueError(f"specials must be one of {', '.join(SPECIALS)}; got {self.specials!r}")
        if self.specials == "fnuz" and not self.signed:
            raise ValueError("specials='fnuz' stores NaN in the sign bit: it needs a signed format")
        if self.specials == "ieee" and self.exp_bits < 2:
            raise ValueError("specials='ieee' reserves the top exponent: exp_bits must be >= 2")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - (0 if self.specials == "fnuz" else 1))
        _check_int("bias", self.bias, -(2 ** 8), 2 ** 8)
        if self._top_field < self._min_field:
            raise ValueError(f"{self.name}: specials={self.specials!r} leave no finite binade")
        if self._top_field - self.bias > 127:
            raise ValueError(f"{self.name}: max exponent {self._top_field - self.bias} exceeds fp32's 127 "
                             f"(bias={self.bias} too small for exp_bits={self.exp_bits})")
        if self.min_step_exp < -149:
            raise ValueError(f"{self.name}: smallest step 2**{self.min_step_exp} is below fp32's 2**-149 "
                             f"(bias={self.bias} too large for exp_bits={self.exp_bits}, man_bits={self.man_bits})")

    # ---- derived constants (Python ints/floats: static under jit) ----
    @property
    def bits(self) -> int:
        return self.exp_bits + self.man_bits + int(self.signed)

    @property
    def _min_field(self) -> int:
        return 1 if self.zero else 0

    @property
    def _top_field(self) -> int:
        """Highest exponent field holding finite values."""
        top = 2 ** self.exp_bits - 1
        if self.specials == "ieee" or (self.specials == "fn" and self.man_bits == 0):
            return top - 1
        return top

    @property
    def _top_man(self) -> int:
        full = 2 ** self.man_bits - 1
        if self.specials == "fn" and self.man_bits > 0 and self._top_field == 2 ** self.exp_bits - 1:
            return full - 1
        return full

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal binade."""
        return self._min_field - self.bias

    @property
    def emax(self) -> int:
        return self._top_field - self.bias

    @property
    def min_step_exp(self) -> int:
        """log2 of the smallest nonzero value's step (the subnormal quantum)."""
        return self.emin - self.man_bits if self.subnormals and self.zero else self.emin

    @property
    def max(self) -> float:
        return float(2.0 ** self.emax * (1 + self._top_man / 2 ** self.man_bits))

    @property
    def min(self) -> float:
        if self.signed:
            return -self.max
        return 0.0 if self.zero else self.tiny

    @property
    def tiny(self) -> float:
        """Smallest positive value."""
        return float(2.0 ** self.min_step_exp) if self.zero else float(2.0 ** self.emin)

    @property
    def min_normal(self) -> float:
        return float(2.0 ** self.emin)

    @property
    def has_inf(self) -> bool:
        return self.specials == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.specials != "none"

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        args = [f"e={self.exp_bits}", f"m={self.man_bits}"]
        default_bias = 2 ** (self.exp_bits - 1) - (0 if self.specials == "fnuz" else 1)
        if self.bias != default_bias:
            args.append(f"bias={self.bias}")
        for field, default in (("specials", "none"), ("subnormals", True), ("signed", True), ("zero", True)):
            if getattr(self, field) != default:
                args.append(f"{field}={getattr(self, field)}")
        return f"fp({','.join(args)})"

    # ---- numerics ----
    @property
    def _fast_ok(self) -> bool:
        """Whether every step 2**(e-m) and its inverse are normal fp32 numbers (float path exact).

        The smallest step must be >= 2**-125: then every fp32 subnormal (which CPUs may flush to
        zero in float ops) lies below half of it and rounds to zero either way."""
        return (self.signed and self.zero and self.subnormals
                and self.emin - self.man_bits >= -125 and self.emax - self.man_bits <= 126)

    def _quantize_f32(self, x, rounding, rand, random_bits, overflow):
        if rounding in ("nearest_even", "nearest_away") and self._fast_ok:
            return self._quantize_fast(x, rounding, overflow)
        return self._quantize_bits(x, rounding, rand, random_bits, overflow)

    def _quantize_fast(self, x, rounding, overflow):
        """Round-to-nearest with float ops: |x| / step is exact (a power-of-two step), and
        rounding it to an integer is exact. Inputs that flush to zero are below half the
        smallest step, so they round to zero either way. Bit-identical to ``_quantize_bits``
        (tested on every bf16 and fp16 pattern); several times cheaper, and it fuses well."""
        a = jnp.abs(x)
        e = (lax.bitcast_convert_type(a, jnp.uint32) >> 23).astype(jnp.int32) - 127
        e = jnp.clip(e, self.emin, self.emax) - self.man_bits
        inv = lax.bitcast_convert_type(((127 - e) << 23).astype(jnp.uint32), jnp.float32)
        step = lax.bitcast_convert_type(((127 + e) << 23).astype(jnp.uint32), jnp.float32)
        k = rnd.round_half(a * inv, rounding)
        q = k * step
        q = jnp.where(q > self.max, self._overflow_value(overflow), q)
        out = jnp.where(jnp.signbit(x), -q, q)
        if self.specials == "fnuz":
            out = jnp.where(out == 0, 0.0, out)
        return jnp.where(jnp.isnan(x), x, out)

    def _quantize_bits(self, x, rounding, rand, random_bits, overflow):
        """The exact integer path: any rounding mode, any format shape."""
        sign, sig, ulp_exp, flog2, is_nan, is_inf, is_zero = rnd.split(x)
        m = self.man_bits
        below = flog2 < self.emin
        qe = jnp.where(below, self.min_step_exp, flog2 - m)
        shift = qe - ulp_exp
        rs = rnd.round_sig(sig, shift, sign, rounding, rand, random_bits)
        out_qe = jnp.where(shift > 0, qe, ulp_exp)
        mag = rnd.join(jnp.zeros_like(sign), rs, out_qe)
        mag_bits = lax.bitcast_convert_type(mag, jnp.uint32)
        max_bits = jnp.uint32(np.float32(self.max).view(np.uint32))
        over = (mag_bits > max_bits) | is_inf
        if not self.zero:  # no zero: everything below the smallest value rounds onto it
            mag = jnp.where(rs == 0, self.tiny, mag)
        out = jnp.where(sign == 1, -mag, mag)
        if self.specials == "fnuz":  # no negative zero (an integer test: immune to flush-to-zero)
            out = jnp.where((rs == 0) & self.zero, 0.0, out)
        over_value = self._overflow_value(overflow)
        if rounding in ("toward_zero", "down", "up"):  # rounding toward zero never overflows a
            inward = {"toward_zero": True, "down": sign == 0, "up": sign == 1}[rounding]  # finite x
            over_value = jnp.where(inward & ~is_inf, self.max, over_value)  # (IEEE 754 7.4)
        out = jnp.where(over, jnp.where(sign == 1, -over_value, over_value), out)
        invalid = jnp.nan if overflow == "ieee" else self.min
        if not self.zero:
            out = jnp.where(is_zero, invalid, out)
        if not self.signed:
            zero_out = 0.0 if self.zero else invalid
            out = jnp.where(sign == 1, jnp.where(is_zero, zero_out, invalid), out)
        return jnp.where(is_nan, x, out)

    def _overflow_value(self, overflow):
        if overflow == "ieee" and self.has_inf:
            return jnp.inf
        if overflow == "ieee" and self.has_nan:
            return jnp.nan
        return self.max

    def _encode_f32(self, q):
        sign, sig, ulp_exp, flog2, is_nan, is_inf, is_zero = rnd.split(q)
        m = self.man_bits
        top = flog2 - ulp_exp  # position of sig's leading bit
        normal = (flog2 >= self.emin) & ~is_zero
        e_field = jnp.where(normal, flog2 + self.bias, 0).astype(jnp.uint32)
        man_normal = rnd.shift(sig ^ rnd.shl(jnp.uint32(1), top), m - top)
        man_sub = rnd.shift(sig, ulp_exp - (self.emin - m))
        man = jnp.where(normal, man_normal, man_sub) & (2 ** m - 1)
        code = e_field << m | man
        if self.signed:
            code = code | sign << (self.exp_bits + m)
        if self.specials == "ieee":
            inf_code = jnp.uint32((2 ** self.exp_bits - 1) << m)
            code = jnp.where(is_inf, inf_code | sign << (self.exp_bits + m), code)
            code = jnp.where(is_nan, inf_code | (1 << max(m - 1, 0)) | sign << (self.exp_bits + m), code)
        elif self.specials == "fn":
            nan_code = jnp.uint32(2 ** (self.exp_bits + m) - 1)
            if self.signed:
                nan_code = nan_code | sign << (self.exp_bits + m)
            code = jnp.where(is_nan, nan_code, code)
        elif self.specials == "fnuz":
            code = jnp.where(is_nan, jnp.uint32(1 << (self.bits - 1)), jnp.where(is_zero, 0, code))
        return code

    def _decode_f32(self, codes):
        m = self.man_bits
        man = codes & (2 ** m - 1)
        e_field = (codes >> m) & (2 ** self.exp_bits - 1)
        sign = (codes >> (self.exp_bits + m)) & 1 if self.signed else jnp.zeros_like(codes)
        sub = (e_field == 0) & self.zero
        rs = jnp.where(sub, man if self.subnormals else 0, man | (1 << m))  # flushed: read as 0
        qe = jnp.where(sub, self.emin, e_field.astype(jnp.int32) - self.bias) - m
        out = rnd.join(sign, rs, qe)
        nan = jnp.zeros(codes.shape, bool)
        top = e_field == 2 ** self.exp_bits - 1
        if self.specials == "ieee":
            out = jnp.where(top & (man == 0), jnp.where(sign == 1, -jnp.inf, jnp.inf), out)
            nan = top & (man != 0)
        elif self.specials == "fn":
            nan = top & (man == 2 ** m - 1)
        elif self.specials == "fnuz":
            nan = codes == (1 << (self.bits - 1))
        return jnp.where(nan, jnp.nan, out)


def _check_int(field: str, value, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{field} must be an integer in [{lo}, {hi}]; got {value!r}")
