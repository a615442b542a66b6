"""Numpy references for scaled quantization, written from REFERENCE.md §1–2.

They divide exactly in fp32 (numpy), clip to ±max (saturation) and round with ml_dtypes
(round to nearest, ties to even) or np.round for integers. ``run`` compiles a quantizer's
call, quantize and dequantize together.
"""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

ML = {"e2m1fn": ml_dtypes.float4_e2m1fn, "e4m3fn": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2,
      "e3m2fn": ml_dtypes.float6_e3m2fn, "e2m3fn": ml_dtypes.float6_e2m3fn}
FMAX = {"e2m1fn": 6.0, "e4m3fn": 448.0, "e5m2": 57344.0, "e3m2fn": 28.0, "e2m3fn": 7.5, "int8": 127.0,
        "mxint8": 127 / 64}


def f32(a):
    return np.asarray(a, np.float32)


def round_to(name, xs):
    """Saturating round-to-nearest-even of fp32 ``xs`` onto format ``name`` (numpy/ml_dtypes)."""
    xs = np.clip(f32(xs), -FMAX[name], FMAX[name])
    if name in ML:
        return xs.astype(ML[name]).astype(np.float32)
    step = np.float32(1 / 64 if name == "mxint8" else 1)
    return f32(np.round(xs / step) * step)


def fake_quant(name, x, s):
    """q(x * (1/s)) * s with 1/s correctly rounded in fp32 (the Quantizer's documented scaling,
    equal to x / s for power-of-two s); ``s`` broadcasts against ``x``."""
    x, s = f32(x), f32(s)
    return f32(round_to(name, x * f32(np.float32(1) / s)) * s)


@functools.partial(jax.jit, static_argnums=0)
def _run(q, x, kw):
    t = q.quantize(x, **kw)
    return q(x, **kw), t, t.dequantize(), q.format.decode(t.codes)


def run(q, x, **kw):
    """``q(x)``, ``q.quantize(x)``, its ``dequantize()`` and the decoded codes, compiled
    together (once per quantizer and shape); arrays come back as numpy."""
    y, t, back, decoded = _run(q, jnp.asarray(x), kw)
    return np.asarray(y), t, np.asarray(back), np.asarray(decoded)


def block_amax(x, n):
    """amax of consecutive blocks of n along the last axis (the last block may be short)."""
    return f32([[np.abs(row[i:i + n]).max() for i in range(0, row.size, n)] for row in x.reshape(-1, x.shape[-1])])


def per_block(values, n, length):
    """Repeats one value per block of n into a row of ``length``."""
    return np.repeat(values, n, axis=-1)[..., :length]
