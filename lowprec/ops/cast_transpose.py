"""Both FP8 layouts of an operand from one kernel: each tile of the high-precision operand is
read once, scaled, rounded to FP8 and written in the operand's layout and transposed, as
Transformer Engine's cast-transpose kernel does.

cuBLASLt's FP8 GEMM takes both operands with the contracted dimension last, so an operand used
by two GEMMs that contract different axes (the activation in the forward and weight-gradient
GEMMs, the weight in the forward and grad-input GEMMs, the output gradient in both backward
GEMMs) is needed in two layouts. From XLA that costs two passes over the operand (1.77x a bf16
copy on an H200); from this kernel one (1.03x; ``experiments.benchmark_transpose``).

The rounding is the quantizer's: ``clip(x * (1/s), -max, max)`` converted to the FP8 dtype
(nearest-even, as ``operand.quantize``'s cast), with ``s`` a power of two so that multiplying
by its reciprocal equals dividing by it exactly. On a GPU the kernel is compiled by Pallas; on
other backends it runs in the Pallas interpreter (the same program, slowly: for tests).

The kernel reads the operand as the program names it (e.g. bf16). XLA, by default, may fuse an
elementwise producer into the quantization that reads it and round the producer's f32 value to
FP8 without rounding it to bf16 first ("excess precision"); there the XLA layouts differ from
the kernel's in a few values (identical with ``xla_allow_excess_precision=False``).
"""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.sharding import AxisType, PartitionSpec

from lowprec.quant import block_kernel, partition

logger = logging.getLogger(__name__)

BLOCK = 64
_logged: set = set()


def split_of(ndim: int, contraction: tuple[int, ...], batch: tuple[int, ...] = ()) -> int | None:
    """Where an operand's dims split into its two GEMM layouts, or None when they do not.

    An operand contracted over ``contraction`` in one GEMM is contracted over its other
    (non-batch) dims in the other; when ``contraction`` is a prefix or a suffix of the dims the
    two layouts are ``x`` and ``x`` viewed as 2-D at the split and transposed.
    """
    c = tuple(sorted(contraction))
    if batch or not c or len(c) == ndim:
        return None
    if c == tuple(range(len(c))):
        return len(c)
    if c == tuple(range(ndim - len(c), ndim)):
        return ndim - len(c)
    return None


def supported(shape: tuple[int, ...], split: int, block: int = BLOCK) -> bool:
    """Whether the 2-D view of ``shape`` at ``split`` is a whole number of ``block`` tiles."""
    rows, cols = math.prod(shape[:split]), math.prod(shape[split:])
    return rows % block == 0 and cols % block == 0


def auto_transposes(backend: str | None = None, device_count: int | None = None) -> tuple[str, str]:
    """What ``Recipe(fp8_transposes="auto")`` runs: ``("pallas", why)`` when the process has
    exactly one device and it is a GPU, else ``("fused", why)`` (elsewhere the kernel would run
    in the Pallas interpreter, and across devices XLA would gather its operands onto each one).
    ``backend`` and ``device_count`` default to this process's."""
    why = block_kernel.not_one_gpu(backend, device_count)
    return ("fused", why) if why is not None else ("pallas", "one GPU")


def resolve_transposes(mode: str) -> str:
    """``mode`` with ``"auto"`` replaced by what it runs here (logged once per choice)."""
    if mode != "auto":
        return mode
    chosen, why = auto_transposes()
    if ("auto", chosen, why) not in _logged:
        _logged.add(("auto", chosen, why))
        logger.info("fp8_transposes=auto: %s (%s)", chosen, why)
    return chosen


def cast_transpose(x, inv_scale, dtype, max_value: float, split: int, *, block: int = BLOCK,
                   interpret: bool | None = None, amax: bool = False):
    """(``x`` in FP8 ``dtype``, the same values of the 2-D view of ``x`` at ``split``, transposed).

    ``x * inv_scale`` is clipped to ``±max_value`` and converted; ``inv_scale`` is a scalar.
    ``amax``: also return the largest finite magnitude of ``x`` (fp32 scalar), from the same
    pass (delayed scaling records it). ``interpret`` defaults to the interpreter on every
    backend but GPUs.
    """
    shape = x.shape
    rows, cols = math.prod(shape[:split]), math.prod(shape[split:])
    if not supported(shape, split, block):
        raise ValueError(f"cast_transpose: the {rows}x{cols} view of {list(shape)} is not a whole number of "
                         f"{block}x{block} tiles")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    _log(shape, split, dtype, interpret)
    inv = jnp.reshape(inv_scale, ()).astype(jnp.float32)
    outs = _partitioned(x, inv, jnp.dtype(dtype), float(max_value), split, block, bool(interpret), bool(amax))
    t = _to_2d(outs[1], x.ndim - split)
    return (outs[0], t, outs[2]) if amax else (outs[0], t)


def _to_2d(t, lead: int):
    """The N-D transposed layout viewed as 2-D (its first ``lead`` dims, the rest). Under a mesh of
    Explicit axes a merged group keeps its first dim's sharding when the others are whole, else
    it is replicated (any other result sharding is ambiguous to jax)."""
    shape = (math.prod(t.shape[:lead]), math.prod(t.shape[lead:]))
    sharding = jax.typeof(t).sharding
    if not any(a == AxisType.Explicit for a in getattr(sharding.mesh, "axis_types", ())):
        return t.reshape(shape)
    spec = partition.padded(sharding.spec, t.ndim)
    merged = [g[0] if all(e is None for e in g[1:]) else None for g in (spec[:lead], spec[lead:])]
    return lax.reshape(t, shape, out_sharding=PartitionSpec(*merged))


def _kernel_2d(x, inv, dtype, max_value: float, split: int, block: int, interpret: bool, amax: bool):
    """The kernel on ``x`` (one device's block): (``x`` in FP8, its 2-D view transposed[, tiles' amax])."""
    shape = x.shape
    rows, cols = math.prod(shape[:split]), math.prod(shape[split:])

    def kernel(x_ref, s_ref, o_ref, ot_ref, *amax_ref):
        x32 = x_ref[...].astype(jnp.float32)
        v = jnp.clip(x32 * s_ref[0], -max_value, max_value)
        o_ref[...] = v.astype(dtype)
        ot_ref[...] = v.T.astype(dtype)
        if amax_ref:  # this tile's largest finite magnitude (NaN < inf is False)
            a = jnp.abs(x32)
            a = jnp.where(a < jnp.inf, a, 0.0)  # one axis at a time: what every Pallas backend lowers
            amax_ref[0][...] = jnp.max(jnp.max(a, axis=1, keepdims=True), axis=0, keepdims=True)

    grid = (rows // block, cols // block)
    tile = pl.BlockSpec((block, block), lambda i, j: (i, j))
    out_specs = [tile, pl.BlockSpec((block, block), lambda i, j: (j, i))]
    out_shape = [jax.ShapeDtypeStruct((rows, cols), dtype), jax.ShapeDtypeStruct((cols, rows), dtype)]
    if amax:
        out_specs.append(pl.BlockSpec((1, 1), lambda i, j: (i, j)))
        out_shape.append(jax.ShapeDtypeStruct(grid, jnp.float32))
    outs = pl.pallas_call(
        kernel, grid=grid, in_specs=[tile, pl.BlockSpec((1,), lambda i, j: (0,))], out_specs=out_specs,
        out_shape=out_shape, interpret=interpret,
    )(x.reshape(rows, cols), jnp.reshape(inv, (1,)))
    return outs[0].reshape(shape), outs[1], (jnp.max(outs[2]) if amax else None)


def _local(x, inv, dtype, max_value, split, block, interpret, amax, *, mesh, specs):
    """One shard's (``x`` in FP8, ``x`` transposed at ``split`` as an N-D array, amax of all shards).

    The kernel runs on the shard's block when that is whole tiles; else (a mesh that cuts the
    operand finer than a tile) the same rounding by XLA, logged. The amax is a ``pmax`` over the
    mesh axes ``x`` is split on, so every shard holds the whole operand's."""
    shape = x.shape
    t_shape = shape[split:] + shape[:split]
    if supported(shape, split, block):
        q, t, a = _kernel_2d(x, inv, dtype, max_value, split, block, interpret, amax)
        t = t.reshape(t_shape)
    else:
        if ("xla", shape, split) not in _logged:
            _logged.add(("xla", shape, split))
            logger.info("FP8 cast-transpose: the shard %s split at %d is not whole %dx%d tiles: XLA's cast and "
                        "transpose on it", list(shape), split, block, block)
        x32 = x.astype(jnp.float32)
        q = jnp.clip(x32 * inv, -max_value, max_value).astype(dtype)
        t = q.transpose(tuple(range(split, x.ndim)) + tuple(range(split)))
        a = jnp.max(jnp.where(jnp.abs(x32) < jnp.inf, jnp.abs(x32), 0.0)) if amax else None
    if a is None:
        a = jnp.zeros((), jnp.float32)
    elif mesh is not None:
        axes = tuple(ax for entry in specs[0] for ax in partition.axes_of(entry))
        if axes:
            a = lax.pmax(a, axes)
    return q, t, a


def _rule(ranks, dtype, max_value, split, block, interpret, amax):
    dims = [f"d{i}" for i in range(ranks[0])]
    x = " ".join(dims)
    return f"{x}, -> {x}, {' '.join(dims[split:] + dims[:split])}, "


def _arg_specs(mesh, shapes, specs, dtype, max_value, split, block, interpret, amax):
    return [specs[0], ()]


def _out_specs(mesh, specs, dtype, max_value, split, block, interpret, amax):
    x = tuple(specs[0])
    return [x, x[split:] + x[:split], ()]


_partitioned = partition.per_shard(_local, rule=_rule, arg_specs=_arg_specs, out_specs=_out_specs, nstatic=6)


def _log(shape, split, dtype, interpret: bool) -> None:
    key = (tuple(shape), split, jnp.dtype(dtype).name, interpret)
    if key not in _logged:
        _logged.add(key)
        logger.info("FP8 cast-transpose %s split at %d -> %s: Pallas kernel%s", list(shape), split,
                    jnp.dtype(dtype).name, " (interpreted: no GPU)" if interpret else "")
