"""One-pass MX-style block fake quantization as a Pallas kernel, bit-identical to the XLA path.

``Quantizer(kernel="auto")`` (the default) runs it for ``q(x)`` when the process has one
device, a GPU (``not_one_gpu``: the kernel is not partitioned across devices), ``supported``
finds nothing against it and the estimator needs no scaled input (STE), and logs which path
ran; ``kernel="pallas"`` always runs it (in the Pallas interpreter off GPUs: for tests),
``kernel="xla"`` never.

XLA quantizes MXFP4 in two passes (the blocks' amax, then scale and round: 0.57x a copy on an
H200). A kernel that holds a tile of whole blocks reads the input once (1.12x a copy, the same
bits: ``experiments.benchmark_quantize``). An earlier kernel ran the format's generic rounding
(logarithms, powers) in Triton's float arithmetic: 4x slower than XLA and 11.5k of 262k values
different. This one uses only exact operations:

- the block amax is a max of finite magnitudes (inf and NaN count as 0, as ``scaling.amax``);
- the power-of-two scale comes from the amax's exponent bits (``pow2_floor``, the OCP rule:
  ``2**(floor(log2 amax) - emax)`` clipped to E8M0's range, 1 for an all-zero block), its
  reciprocal the same way, so ``x * (1/s)`` equals ``x / s``; E8M0's subnormal end, 2**-127,
  is applied as 2**-126 times 1/2, so the kernel is exact where subnormals are flushed too;
- rounding onto a format of at most 16 values is a chain of comparisons with the midpoints of
  its grid, each tie going the way the format's own ``quantize`` sends it (nearest-even), and
  values past the largest saturate to it; NaN stays NaN, the sign is the input's (a float
  format's zero keeps it, -0; an integer format's zero is +0).

Tiles are ``rows x block`` (rows contiguous blocks: one contiguous chunk of memory), ``rows``
the largest power of two up to 256 that divides the number of blocks (at least 8).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from lowprec.formats import FloatFormat
from lowprec.quant import partition

MAX_ROWS, MIN_ROWS = 256, 8


def not_one_gpu(backend: str | None = None, device_count: int | None = None) -> str | None:
    """Why a Pallas kernel should not be chosen automatically here (None when the process has
    exactly one device and it is a GPU): elsewhere it would run in the Pallas interpreter, and
    under a sharded jit XLA would gather its operands onto every device. ``backend`` and
    ``device_count`` default to this process's."""
    backend = backend or jax.default_backend()
    device_count = jax.device_count() if device_count is None else device_count
    if backend != "gpu":
        return f"backend {backend}"
    if device_count != 1:
        return f"{device_count} devices (the kernel is not partitioned)"
    return None


def _rows(blocks: int) -> int:
    """Blocks per tile: the largest power of two <= MAX_ROWS dividing ``blocks`` (0 if < MIN_ROWS)."""
    rows = MAX_ROWS
    while rows >= MIN_ROWS and blocks % rows:
        rows //= 2
    return rows if rows >= MIN_ROWS else 0


def supported(q, x) -> str | None:
    """Why ``block_fake_quant(q, x)`` (``q`` a Quantizer) cannot run (None when it can)."""
    g = q.granularity
    if g.kind != "block" or g.axes not in ((-1,), (x.ndim - 1,)):
        return f"granularity {g} (blocks along the last axis only)"
    if x.ndim == 0 or x.shape[-1] % g.size[0] or not _rows(x.size // g.size[0]):
        return (f"shape {tuple(x.shape)}: the last axis must be whole blocks of {g.size[0]} and their number a "
                f"multiple of {MIN_ROWS}")
    if q.scale != "pow2_floor" or q.source != "absmax" or q.tensor_scale or q.double_quant or q.occ:
        return "scales other than pow2_floor from the current amax"
    if q.rounding != "nearest_even" or q.overflow != "saturate":
        return f"rounding {q.rounding} / overflow {q.overflow}"
    pos = _grid(q.format)
    if pos is None:
        return f"format {q.format}: more than 16 values or not symmetric"
    return None


@functools.lru_cache(maxsize=None)
def _grid(fmt):
    """(positive grid values from 0 up, tie-goes-up flags) of a symmetric format of <= 16 values."""
    with jax.ensure_compile_time_eval():  # may be first asked while tracing
        values = np.unique(np.asarray(fmt.values(), np.float64))
        if len(values) > 16 or not np.array_equal(values[values > 0], -values[values < 0][::-1]):
            return None
        pos = values[values >= 0]
        mids = ((pos[:-1] + pos[1:]) / 2).astype(np.float32)
        up = np.asarray(fmt.quantize(jnp.asarray(mids), "nearest_even", overflow="saturate")) == pos[1:]
    return tuple(float(v) for v in pos), tuple(float(m) for m in mids), tuple(bool(u) for u in up)


def block_fake_quant(q, x, *, interpret: bool | None = None):
    """``q(x)``'s forward value (fp32) in one pass; ``supported(q, x)`` must be None."""
    why = supported(q, x)
    if why is not None:
        raise ValueError(f"block_fake_quant: {why}")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    return _partitioned(x, q, bool(interpret))


def _one(q, x, interpret: bool):
    """The kernel on ``x`` (one device's block, ``supported``)."""
    n = q.granularity.size[0]
    flat = x.reshape(-1, n)
    pos, mids, up = _grid(q.format)
    kernel = functools.partial(_kernel, emax=int(q.format.emax), pos=pos, mids=mids, up=up,
                               signed_zero=isinstance(q.format, FloatFormat))
    rows = _rows(flat.shape[0])
    spec = pl.BlockSpec((rows, n), lambda i: (i, 0))
    y = pl.pallas_call(kernel, grid=(flat.shape[0] // rows,), in_specs=[spec], out_specs=spec,
                       out_shape=jax.ShapeDtypeStruct(flat.shape, jnp.float32), interpret=interpret)(flat)
    return y.reshape(x.shape)


def _local(x, q, interpret, *, mesh, specs):
    """One shard's ``q(x)``: its blocks are whole blocks of the operand (``_arg_specs``), so the
    kernel's values are the unsharded kernel's; a shard too small for the kernel's tiles takes
    the XLA path of ``q`` (the same bits)."""
    if supported(q, x) is None:
        return _one(q, x, interpret)
    return q.replace(kernel="xla")(x.astype(jnp.float32))


def _rule(ranks, q, interpret):
    dims = " ".join(f"d{i}" for i in range(ranks[0]))
    return f"{dims} -> {dims}"


def _arg_specs(mesh, shapes, specs, q, interpret):
    """The operand's sharding, but its last axis whole unless each shard holds whole blocks."""
    spec, n = list(specs[0]), q.granularity.size[0]
    pieces = partition.shards(mesh, spec[-1])
    if pieces > 1 and (shapes[0][-1] % pieces or (shapes[0][-1] // pieces) % n):
        spec[-1] = None
    return [tuple(spec)]


def _out_specs(mesh, specs, q, interpret):
    return [tuple(specs[0])]


_partitioned = partition.per_shard(_local, rule=_rule, arg_specs=_arg_specs, out_specs=_out_specs, nstatic=2)


def _pow2(biased):
    """2**(biased - 127) for integer ``biased`` in 1..254 (a normal number)."""
    return lax.bitcast_convert_type(biased << 23, jnp.float32)


def _kernel(x_ref, y_ref, *, emax, pos, mids, up, signed_zero):
    x = x_ref[...].astype(jnp.float32)
    a = jnp.abs(x)
    am = jnp.max(jnp.where(a < jnp.inf, a, 0.0), axis=1, keepdims=True)  # NaN < inf is False
    biased = (lax.bitcast_convert_type(am, jnp.int32) >> 23) & 0xFF
    k = jnp.clip(biased - emax, 0, 254)
    zero = am == 0
    # Scales 2**-127 (k = 0) and inverses 2**-127 (k = 254) are subnormal: each is applied as two
    # normal factors, 2**-126 then 1/2, so that it is exact where subnormals are flushed too.
    s_hi = jnp.where(zero, 1.0, _pow2(jnp.maximum(k, 1)))
    s_lo = jnp.where(~zero & (k == 0), np.float32(0.5), np.float32(1.0))
    inv_hi = jnp.where(zero, 1.0, _pow2(jnp.maximum(254 - k, 1)))
    inv_lo = jnp.where(~zero & (k == 254), np.float32(0.5), np.float32(1.0))
    xs = jnp.abs(x * inv_hi * inv_lo)
    q = jnp.zeros_like(xs)
    for v, m, tie_up in zip(pos[1:], mids, up):
        q = jnp.where(xs >= m if tie_up else xs > m, v, q)
    sign = lax.bitcast_convert_type(x, jnp.uint32) & np.uint32(0x80000000)
    if not signed_zero:  # integer grids have no -0
        sign = jnp.where(q == 0, np.uint32(0), sign)
    q = lax.bitcast_convert_type(lax.bitcast_convert_type(q, jnp.uint32) | sign, jnp.float32)
    y_ref[...] = jnp.where(x != x, x, q * s_hi * s_lo)
