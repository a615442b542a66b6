"""Integer and fixed-point formats: ``k * 2**-frac_bits`` for integers k in a range."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from lowprec.formats import rounding as rnd
from lowprec.formats.base import Format
from lowprec.formats.floats import _check_int


@dataclasses.dataclass(frozen=True)
class IntFormat(Format):
    """``bits``-bit integers, signed (two's complement codes) or unsigned.

    ``narrow_range=True`` (default) makes a signed range symmetric, [-(2**(b-1)-1), 2**(b-1)-1]
    (int8: ±127), the usual choice for symmetric scaling; ``False`` gives the full
    [-2**(b-1), 2**(b-1)-1]. ``frac_bits`` makes it fixed point (MXINT8: 6 fractional bits).
    Overflow always saturates (integers have no inf or NaN codes); NaN stays NaN.
    """

    bits: int
    signed: bool = True
    narrow_range: bool = True
    frac_bits: int = 0
    label: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        _check_int("bits", self.bits, 2 if self.signed else 1, 24)
        _check_int("frac_bits", self.frac_bits, 0, 23)

    @property
    def _kmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    @property
    def _kmin(self) -> int:
        if not self.signed:
            return 0
        return -self._kmax if self.narrow_range else -(2 ** (self.bits - 1))

    @property
    def max(self) -> float:
        return float(self._kmax * 2.0 ** -self.frac_bits)

    @property
    def min(self) -> float:
        return float(self._kmin * 2.0 ** -self.frac_bits)

    @property
    def emax(self) -> int:
        return int(self._kmax).bit_length() - 1 - self.frac_bits

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        args = [f"bits={self.bits}"]
        for field, default in (("signed", True), ("narrow_range", True), ("frac_bits", 0)):
            if getattr(self, field) != default:
                args.append(f"{field}={getattr(self, field)}")
        return f"int({','.join(args)})"

    def values(self):
        return np.arange(self._kmin, self._kmax + 1, dtype=np.float64) * 2.0 ** -self.frac_bits

    def _quantize_f32(self, x, rounding, rand, random_bits, overflow):
        if rounding in ("nearest_even", "nearest_away"):
            return self._quantize_fast(x, rounding)
        return self._quantize_bits(x, rounding, rand, random_bits)

    def _quantize_fast(self, x, rounding):
        """Clip to the (integer) range first, then round: every value is below 2**23, so the
        scaling by 2**frac_bits and the rounding are exact. Bit-identical to the integer path."""
        k = jnp.clip(x * 2.0 ** self.frac_bits, self._kmin, self._kmax)
        k = jnp.sign(k) * rnd.round_half(jnp.abs(k), rounding)
        out = k * 2.0 ** -self.frac_bits
        out = jnp.where(out == 0, 0.0, out) if self.signed else jnp.abs(out)
        return jnp.where(jnp.isnan(x), x, out)

    def _quantize_bits(self, x, rounding, rand, random_bits):
        """The exact integer path: any rounding mode."""
        sign, sig, ulp_exp, _, is_nan, _, _ = rnd.split(x)
        shift = -self.frac_bits - ulp_exp
        rs = rnd.round_sig(sig, shift, sign, rounding, rand, random_bits)
        # Values beyond 2**24 are integers already (shift <= 0) and saturate below.
        out = rnd.join(sign, rs, jnp.where(shift > 0, -self.frac_bits, ulp_exp))
        out = jnp.clip(out, self.min, self.max)
        if self.signed:
            out = jnp.where(out == 0, 0.0, out)  # integers have no negative zero
        return jnp.where(is_nan, x, out)

    def _encode_f32(self, q):
        k = jnp.round(q * 2.0 ** self.frac_bits)
        k = jnp.where(jnp.isnan(k), 0, k).astype(jnp.int32)
        return k.astype(jnp.uint32) & (2 ** self.bits - 1)

    def _decode_f32(self, codes):
        k = codes.astype(jnp.int32)
        if self.signed:
            k = jnp.where(k >= 2 ** (self.bits - 1), k - 2 ** self.bits, k)
        return k.astype(jnp.float32) * 2.0 ** -self.frac_bits
