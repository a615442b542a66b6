"""One-pass block quantization (MX-style) as a Pallas kernel on GPUs.

XLA computes a block-scaled fake quantization in two passes over memory: the blocks' amax
(one read), then scale and round (a second read and a write). A kernel that loads a tile of
whole blocks, reduces each block and rounds it while the tile is in registers reads the input
once, as a copy does. It runs the same functions as the XLA path (``scaling.scale_from_amax``
and the format's own rounding) on the same fp32 values, so the two agree bit for bit (tested
on CPU in Pallas's interpreter and on a GPU by ``experiments/benchmark_quantize.py``).

Used by ``Quantizer.__call__`` when ``fusable`` says so: on a GPU, blocks along the last axis
whose size is a power of two dividing it, current (absmax) power-of-two scales, no tensor
scale, double quantization or OCC, and a gradient estimator that needs no saved input (STE).
Every other case, and any process with ``LOWPREC_FUSED_QUANT=0``, takes the XLA path. Which
path ran is logged once per quantizer and shape.
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp

from lowprec.quant import scaling

logger = logging.getLogger(__name__)
ENV = "LOWPREC_FUSED_QUANT"
POW2_RULES = ("pow2_floor", "pow2_ceil", "pow2_nearest")
TILE_ELEMENTS = 16384  # elements per program: blocks of 32 -> 512 blocks (64 KiB of fp32)
_logged: set = set()


def fusable(q, x, platform: str | None = None) -> str | None:
    """Why ``q(x)`` cannot take the fused kernel (a short reason), or None when it can."""
    platform = platform or jax.default_backend()
    g = q.granularity
    if os.environ.get(ENV, "1") == "0":
        return f"{ENV}=0"
    if platform != "gpu":
        return f"platform {platform}"
    if g.kind != "block" or g.axes not in ((-1,), (x.ndim - 1,)):
        return f"granularity {g}"
    n = g.size[0]
    if n & (n - 1) or n > TILE_ELEMENTS or x.ndim == 0 or x.shape[-1] % n:
        return f"block size {n} and last dimension {x.shape[-1] if x.ndim else None}"
    if q.source != "absmax" or q.scale not in POW2_RULES or q.tensor_scale:
        return f"scale {q.scale} from {q.source}{' with a tensor scale' if q.tensor_scale else ''}"
    if q.double_quant is not None or q.occ is not None:
        return "double quantization or OCC"
    if q.estimator.needs_input or q.rounding == "stochastic":
        return f"estimator {q.estimator} / rounding {q.rounding}"
    return None


def log_path(q, x, reason: str | None) -> None:
    """Log once per quantizer and shape which implementation quantizes it."""
    key = (q, tuple(x.shape), jnp.dtype(x.dtype).name, reason)
    if key not in _logged:
        _logged.add(key)
        how = "fused Pallas kernel (one pass)" if reason is None else f"XLA ({reason})"
        logger.info("%s on %s %s: %s", q, jnp.dtype(x.dtype).name, tuple(x.shape), how)


def block_fake_quant(q, x, interpret: bool = False) -> jax.Array:
    """``q(x)``'s forward value for block granularity along the last axis, in one pass."""
    n = q.granularity.size[0]
    rows = x.size // n
    flat = x.reshape(rows, n)
    per_tile = max(1, TILE_ELEMENTS // n)
    while rows % per_tile:  # whole tiles only (rows is a multiple of a power of two, or 1)
        per_tile //= 2
    from jax.experimental import pallas as pl

    spec = pl.BlockSpec((per_tile, n), lambda i: (i, 0))
    y = pl.pallas_call(functools.partial(_kernel, q), out_shape=jax.ShapeDtypeStruct(flat.shape, x.dtype),
                       grid=(rows // per_tile,), in_specs=[spec], out_specs=spec, interpret=interpret)(flat)
    return y.reshape(x.shape)


def _kernel(q, x_ref, y_ref):
    x = x_ref[...].astype(jnp.float32)
    s = scaling.scale_from_amax(scaling.amax(x, (1,)), q.format, q.scale)
    xs = x * (1.0 / s)  # powers of two: exact, as the XLA path's correctly rounded inverse
    y = q.format._quantize_f32(xs, q.rounding, None, q.random_bits, q.overflow) * s
    y_ref[...] = y.astype(y_ref.dtype)
