"""Lookup-table formats: a sorted list of values (NF4, the primer's 16-level table, any user list)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import lax

from lowprec.formats import rounding as rnd
from lowprec.formats.base import Format

# QLoRA's NormalFloat4 (Dettmers et al. 2023, appendix E).
NF4_VALUES = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
              -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
              0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
              0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
# The primer's worked 16-level example (seeds/003).
PRIMER_LUT4_VALUES = (-1.0, -0.87, -0.73, -0.6, -0.47, -0.33, -0.2, -0.07,
                      0.07, 0.2, 0.33, 0.47, 0.6, 0.73, 0.87, 1.0)


@dataclasses.dataclass(frozen=True)
class Codebook(Format):
    """Rounds to the nearest of ``values`` (strictly increasing, finite, 2..256 of them).

    Codes are indices into the table. Ties (exact midpoints, decided exactly) go to the even
    index under ``nearest_even``, away from zero under ``nearest_away`` and to the larger value
    under ``nearest_up``; ``toward_zero``
    picks the neighbour of smaller magnitude; between ``-v`` and ``v`` both keep the sign of
    x. Values outside the table's range saturate to its ends; stochastic rounding picks a
    neighbour with probability proportional to closeness.
    """

    values_: tuple[float, ...]
    label: str | None = dataclasses.field(default=None, compare=False)

    def __init__(self, values, label: str | None = None):
        vals = tuple(float(np.float32(v)) for v in values)
        arr = np.asarray(vals, np.float64)
        if not 2 <= arr.size <= 256:
            raise ValueError(f"values must hold 2..256 entries; got {arr.size}")
        if not np.all(np.isfinite(arr)) or not np.all(np.diff(arr) > 0):
            raise ValueError("values must be finite and strictly increasing (after rounding to fp32)")
        object.__setattr__(self, "values_", vals)
        object.__setattr__(self, "label", label)

    @property
    def bits(self) -> int:
        return max(1, int(np.ceil(np.log2(len(self.values_)))))

    @property
    def max(self) -> float:
        """The largest magnitude in the table: what absmax scaling maps a group's amax onto.
        For a table symmetric at its ends (NF4: -1 and 1) it is the largest value; for one that
        is not (``[-4, 0, 1]``) it is the larger end's magnitude, 4, so scaled values above the
        smaller end (1) saturate there."""
        return float(max(abs(self.values_[0]), abs(self.values_[-1])))

    @property
    def min(self) -> float:
        return float(self.values_[0])

    @property
    def emax(self) -> int:
        return int(np.floor(np.log2(self.max)))

    @property
    def name(self) -> str:
        return self.label or "codebook(" + ",".join(f"{v:g}" for v in self.values_) + ")"

    def _tables(self):
        v = np.asarray(self.values_, np.float64)
        mid = (v[:-1] + v[1:]) / 2
        mid32 = mid.astype(np.float32)
        mid_lo = np.where(mid32 > mid, np.nextafter(mid32, np.float32(-np.inf)), mid32)
        return jnp.asarray(v, jnp.float32), jnp.asarray(mid_lo), jnp.asarray(mid_lo == mid)

    def _index(self, x, rounding, rand):
        """Index of the chosen neighbour. Comparisons use integer keys: exact, whereas float
        compares may treat subnormal inputs as zero (CPU flush-to-zero)."""
        vals, mid_lo, mid_exact = self._tables()
        n = len(self.values_)
        kx, kv, km = _order_key(x), _order_key(vals), _order_key(mid_lo)
        i_hi = jnp.clip(jnp.searchsorted(kv, kx, side="left"), 1, n - 1)
        i_lo = i_hi - 1
        lo, hi = vals[i_lo], vals[i_hi]
        positive = (lax.bitcast_convert_type(x, jnp.uint32) >> 31) == 0  # +0 too: keeps odd symmetry
        if rounding in rnd.NEAREST:
            m = km[i_lo]
            tie = mid_exact[i_lo] & (kx == m)
            tie_hi = {"nearest_even": i_hi % 2 == 0, "nearest_away": positive, "nearest_up": True,
                      "nearest_zero": ~positive}[rounding]
            up = (kx > m) & ~tie | tie & tie_hi
        elif rounding == "toward_zero":  # the smaller magnitude; equal ones: the side of x
            smaller_hi = (jnp.abs(hi) < jnp.abs(lo)) | ((jnp.abs(hi) == jnp.abs(lo)) & positive)
            up = (kx >= kv[i_hi]) | ((kx > kv[i_lo]) & smaller_hi)
        elif rounding == "down":
            up = kx >= kv[i_hi]
        elif rounding == "up":
            up = kx > kv[i_lo]
        else:  # stochastic
            p = (x - lo) / (hi - lo)
            u = (rand >> 8).astype(jnp.float32) * 2.0 ** -24
            up = u < p
        return jnp.where(up, i_hi, i_lo)

    def _quantize_f32(self, x, rounding, rand, random_bits, overflow):
        vals = self._tables()[0]
        out = vals[self._index(x, rounding, rand)]
        return jnp.where(jnp.isnan(x), x, out)

    def _encode_f32(self, q):
        return self._index(q, "nearest_even", None).astype(jnp.uint32)

    def _decode_f32(self, codes):
        vals = self._tables()[0]
        return vals[jnp.clip(codes, 0, len(self.values_) - 1).astype(jnp.int32)]

    def values(self) -> np.ndarray:
        return np.asarray(self.values_, np.float64)


def _order_key(x):
    """int32 keys ordered as the fp32 values ``x`` (NaN aside); -0 and +0 share key 0."""
    i = lax.bitcast_convert_type(x, jnp.int32)
    i = jnp.where((i & 0x7FFFFFFF) == 0, 0, i)
    return jnp.where(i < 0, i ^ 0x7FFFFFFF, i)
