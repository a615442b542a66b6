"""The interface every number format implements."""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
import numpy as np

from lowprec.formats import rounding as rnd

OVERFLOW_POLICIES = ("saturate", "ieee")


class Format(abc.ABC):
    """A set of representable values with exact rounding onto it (no scaling).

    Subclasses are frozen dataclasses, so a format is hashable and usable as a static
    argument under ``jax.jit``. All arithmetic happens on exact fp32 values; inputs may be
    fp32, bf16 or fp16 and the result has the input's dtype (a format finer than the input
    dtype is rounded once more, to nearest-even, by that final cast).
    """

    bits: int

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The canonical name (a registry name or a string that ``formats.get`` parses)."""

    @property
    @abc.abstractmethod
    def max(self) -> float:
        """The largest finite value."""

    @property
    def min(self) -> float:
        """The smallest (most negative) finite value."""
        return float(-self.max)

    @property
    @abc.abstractmethod
    def emax(self) -> int:
        """floor(log2(max)): the exponent of the largest value (OCP MX scaling uses it)."""

    @property
    def signed(self) -> bool:
        return self.min < 0

    @abc.abstractmethod
    def _quantize_f32(self, x, rounding, rand, random_bits, overflow):
        """Rounds an fp32 array onto the grid; ``rand`` holds uint32 noise when stochastic."""

    @abc.abstractmethod
    def _encode_f32(self, q):
        """Integer codes (uint32) of fp32 values already on the grid."""

    @abc.abstractmethod
    def _decode_f32(self, codes):
        """fp32 values of uint32 codes."""

    def quantize(self, x, rounding: str = "nearest_even", key=None, *,
                 overflow: str = "saturate", random_bits: int | None = None) -> jax.Array:
        """Rounds ``x`` onto this format's grid; same shape and dtype as ``x``.

        ``overflow="saturate"`` clamps to ±max (±inf too); ``"ieee"`` follows the format's
        specials as a cast does (inf where it has inf, else NaN where it has NaN, else
        saturate). NaN stays NaN. ``rounding="stochastic"`` needs ``key``; ``random_bits``
        limits the random bits compared with the dropped bits (hardware uses few).
        """
        x = jnp.asarray(x)
        rnd.check_rounding(rounding, key, random_bits)
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"unknown overflow {overflow!r}; known: {', '.join(OVERFLOW_POLICIES)}")
        x32 = rnd.to_f32(x)
        rand = rnd.random_bits_like(key, x.shape) if rounding == "stochastic" else None
        return self._quantize_f32(x32, rounding, rand, random_bits, overflow).astype(x.dtype)

    def encode(self, x) -> jax.Array:
        """Integer codes of ``x`` rounded to nearest (saturating): uint8 up to 8 bits."""
        q = self._quantize_f32(rnd.to_f32(jnp.asarray(x)), "nearest_even", None, None, "saturate")
        return self._encode_f32(q).astype(self.code_dtype)

    def decode(self, codes, dtype=jnp.float32) -> jax.Array:
        """Values of integer codes, as ``dtype``."""
        return self._decode_f32(jnp.asarray(codes).astype(jnp.uint32)).astype(dtype)

    @property
    def code_dtype(self):
        return jnp.uint8 if self.bits <= 8 else jnp.uint16 if self.bits <= 16 else jnp.uint32

    def values(self) -> np.ndarray:
        """All finite representable values, sorted (fp64 numpy); formats up to 16 bits."""
        if self.bits > 16:
            raise ValueError(f"values() enumerates formats of at most 16 bits; {self.name} has {self.bits}")
        v = np.asarray(self._decode_f32(jnp.arange(2 ** self.bits, dtype=jnp.uint32)), np.float64)
        return np.unique(v[np.isfinite(v)]) + 0.0  # one zero, unsigned

    def neighbors(self, x) -> tuple[jax.Array, jax.Array]:
        """The grid points just below and above fp32 ``x`` (equal when ``x`` is on the grid)."""
        x32 = rnd.to_f32(jnp.asarray(x))
        lo = self._quantize_f32(x32, "down", None, None, "saturate")
        hi = self._quantize_f32(x32, "up", None, None, "saturate")
        return lo, hi

    def __str__(self) -> str:
        return self.name
