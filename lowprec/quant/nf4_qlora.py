"""QLoRA's NF4 with double quantization as bitsandbytes computes it on the CPU (see
docs/reference/nf4_qlora.md): codes from the exact fp32 absmax of each 64-block; the absmax
values minus their mean quantized with the 8-bit dynamic map in blocks of 256. ``NF4QLoRA``
(``presets.NF4_QLORA``) offers it as a stored weight format (``lp.nn.weight_quantizer("nf4_qlora")``)."""

from __future__ import annotations

from fractions import Fraction
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from lowprec.formats.codebook import NF4_VALUES


def _round32(q: Fraction) -> np.float32:
    """The fp32 nearest to the exact rational ``q`` (ties to even; normal range)."""
    if q == 0:
        return np.float32(0)
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    e -= Fraction(2) ** e > a
    ulp = Fraction(2) ** (e - 23)
    return np.float32(float(round(q / ulp) * ulp))


def _fma32(a, b, c) -> np.float32:
    return _round32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """torch's fp32 ``linspace`` on an x86 CPU (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp):
    ``step = (end - start) / (steps - 1)`` in fp32; the first half ``start + step * i``, the second
    ``end - step * (steps - 1 - i)``, each one fused multiply-add (the compiler contracts them)."""
    start, end = np.float32(start), np.float32(end)
    step = np.float32((end - start) / np.float32(steps - 1))
    half = steps // 2
    return np.array([_fma32(step, i, start) if i < half else _fma32(-step, steps - 1 - i, end)
                     for i in range(steps)], np.float32)


@functools.cache
def _dynamic_map() -> np.ndarray:
    data = []
    for i in range(7):
        b = linspace32(0.1, 1.0, 2 ** i + 1)
        m = (b[:-1] + b[1:]) / np.float32(2)
        s = np.float32(10.0 ** (-6 + i))
        data += list(s * m) + list(-s * m)
    out = np.sort(np.array(data + [0.0, 1.0], np.float32))
    out.flags.writeable = False
    return out


def dynamic_map() -> np.ndarray:
    """bitsandbytes' signed 8-bit dynamic map (``create_dynamic_map(signed=True)``), fp32, sorted:
    127 negative values, 0, 127 positive values and 1 (its lowest value is -0.99297, not -1)."""
    return _dynamic_map()


def _lut(code: np.ndarray) -> np.ndarray:
    """The C++ CPU kernel's 65536-bin table from a normalized value's bin to its 8-bit code."""
    mids = (np.float32(0.5) * (code[:-1] + code[1:])).astype(np.float32)
    val = np.float32(-1) + (np.float32(2) * np.arange(65536, dtype=np.float32)) / np.float32(65535)
    return np.searchsorted(mids, val, side="left").astype(np.uint8)


def _pad_blocks(x, bs):
    n = x.shape[0]
    return jnp.pad(x, (0, -n % bs)).reshape(-1, bs), n


def _absmax(xb):
    return jnp.max(jnp.abs(xb), axis=1)


def quantize(x):
    """(packed nibbles uint8, absmax codes uint8, offset fp32, fp32 absmax of each 256-block)."""
    x = jnp.asarray(x).reshape(-1).astype(jnp.float32)
    xb, n = _pad_blocks(x, 64)
    am = _absmax(xb)
    full = n // 64
    # bnb divides by max(absmax, 1e-38), an fp32 subnormal that XLA flushes to 0: a block whose
    # absmax is 0 (or subnormal, flushed) scales to 0 here, as bnb's does for zero blocks
    ok = am >= jnp.finfo(jnp.float32).tiny
    safe = jnp.where(ok, am, 1)[:, None]
    inv = jnp.float32(1) / safe
    div = xb / safe  # the short last block divides
    s = jnp.where(jnp.arange(xb.shape[0])[:, None] < full, xb * inv, div)
    s = jnp.where(ok[:, None], jnp.clip(s, -1, 1), 0).reshape(-1)[:n]
    s = jnp.pad(s, (0, n % 2))  # bnb pads an odd count with a scaled 0 (code 7)
    am = jnp.where(jnp.arange(am.shape[0]) < full, am, jnp.maximum(am, jnp.float32(1e-38)))
    v = jnp.asarray(NF4_VALUES, jnp.float32)
    codes = jnp.searchsorted((v[:-1] + v[1:]) / 2, s, side="left").astype(jnp.uint8)
    packed = (codes[0::2] << 4) | codes[1::2]
    offset = _mean8(am)
    c8, am2 = _quantize_dynamic(am - offset)
    return packed, c8, offset, am2


def _mean8(a):
    """torch's fp32 ``mean`` on the CPU for short vectors: 8 lane sums, then the lanes and the
    tail in order, divided by the count (a guess checked on the fixture's sizes, up to
    264 blocks; torch's cascade sum may add larger vectors in another order)."""
    n = a.shape[0]
    k = n - n % 8
    acc, _ = lax.scan(lambda c, r: (c + r, None), jnp.zeros(8, jnp.float32), a[:k].reshape(-1, 8))
    s = jnp.float32(0)
    for j in range(8):
        s = s + acc[j]
    for i in range(k, n):
        s = s + a[i]
    # a true division: under jit XLA turns a division by a constant into a multiply by its
    # rounded reciprocal (another fp32 result), so the count is hidden behind a barrier
    return s / lax.optimization_barrier(jnp.float32(n))


def _quantize_dynamic(a):
    ab, n = _pad_blocks(a, 256)
    am = _absmax(ab)
    inv = jnp.float32(1) / jnp.where(am == 0, 1, am)
    v = jnp.clip(ab * inv[:, None], -1, 1)
    idx = ((v + 1) * jnp.float32(0.5) * jnp.float32(65535) + jnp.float32(0.5)).astype(jnp.int32)
    c = jnp.asarray(_lut(dynamic_map()))[idx]
    c = jnp.where(am[:, None] == 0, 0, c).astype(jnp.uint8)
    return c.reshape(-1)[:n], am


def _rounded(p):
    """``p`` itself, kept from being contracted with the add that consumes it into one fused
    multiply-add: XLA:CPU (and GPU) fuse a multiply into the next add under jit, and the
    optimization barrier does not stop it; a select between them does (NaN stays NaN)."""
    return jnp.where(p == p, p, jnp.float32(jnp.nan))


def dequantize(packed, absmax_codes, offset, absmax2, shape, dtype):
    """The dequantized tensor: code * (dynamic[absmax code] * absmax2 + offset), in fp32, then cast."""
    n = int(np.prod(shape))
    am = jnp.asarray(dynamic_map())[absmax_codes.astype(jnp.int32)] * jnp.repeat(absmax2, 256)[:absmax_codes.shape[0]]
    am = _rounded(am) + offset  # no fused multiply-add: bnb rounds twice
    c = jnp.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:n].astype(jnp.int32)
    y = jnp.asarray(NF4_VALUES, jnp.float32)[c] * jnp.repeat(am, 64)[:n]
    return y.astype(dtype).reshape(shape)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QLoRATensor:
    """A tensor stored as bitsandbytes stores an NF4 weight with double quantization: ``packed``
    (two 4-bit codes a byte, the first in the high nibble), ``absmax_codes`` (one uint8 code of the
    dynamic map per 64-block), ``absmax2`` (fp32, one per 256 blocks) and ``offset`` (the fp32
    mean removed from the absmax values). ``axis``: the axis the blocks run along (moved last
    before flattening row-major)."""

    packed: jax.Array
    absmax_codes: jax.Array
    offset: jax.Array
    absmax2: jax.Array
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    dtype: str = dataclasses.field(metadata=dict(static=True))
    axis: int = dataclasses.field(metadata=dict(static=True))

    def dequantize(self) -> jax.Array:
        moved = _moved_shape(self.shape, self.axis)
        y = dequantize(self.packed, self.absmax_codes, self.offset, self.absmax2, moved, self.dtype)
        return jnp.moveaxis(y, -1, self.axis)

    def nbytes(self) -> int:
        """Bytes stored: codes, absmax codes, absmax2 and the offset (~4.127 bits a weight)."""
        return self.packed.size + self.absmax_codes.size + 4 * self.absmax2.size + 4 * self.offset.size


def _moved_shape(shape, axis):
    shape = list(shape)
    return tuple(shape[:axis % len(shape)] + shape[axis % len(shape) + 1:] + [shape[axis]])


@dataclasses.dataclass(frozen=True)
class NF4QLoRA:
    """QLoRA's NF4 weight format, bit for bit as bitsandbytes (``quantize_4bit(..., blocksize=64,
    compress_statistics=True, quant_type="nf4")``): ``quantize(x)`` flattens ``x`` with ``axis``
    moved last and gives a :class:`QLoRATensor`. A stored-weight format (QLoRA's base, PTQ's
    round-to-nearest), not a fake-quantizing ``Quantizer``: it has no estimator and no GEMM path.
    ``lowprec.quant.presets.NF4_QLORA`` (axis -1: a torch weight (out, in) as bitsandbytes
    flattens it); ``along(0)`` for a Flax kernel (in, out), as ``lp.nn.weight_quantizer`` does."""

    axis: int = -1

    name = "nf4_qlora"

    def along(self, axis: int) -> NF4QLoRA:
        return dataclasses.replace(self, axis=axis)

    def quantize(self, x) -> QLoRATensor:
        x = jnp.asarray(x)
        flat = jnp.moveaxis(x, self.axis, -1).reshape(-1)
        packed, c8, offset, am2 = quantize(flat)
        return QLoRATensor(packed, c8, offset, am2, tuple(x.shape), jnp.dtype(x.dtype).name, self.axis)

    def __call__(self, x) -> jax.Array:
        """``quantize(x).dequantize()`` (no gradient rule: not for training through)."""
        return self.quantize(x).dequantize()

    def __str__(self) -> str:
        return (f"NF4_QLORA(bitsandbytes nf4, blocks of 64 along axis {self.axis}, "
                "absmax 8-bit dynamic in blocks of 256)")
