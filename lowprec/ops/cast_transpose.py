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
from jax.experimental import pallas as pl

from lowprec.quant import block_kernel

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
    )(x.reshape(rows, cols), jnp.reshape(inv_scale, (1,)).astype(jnp.float32))
    if amax:
        return outs[0].reshape(shape), outs[1], jnp.max(outs[2])
    return outs[0].reshape(shape), outs[1]


def _log(shape, split, dtype, interpret: bool) -> None:
    key = (tuple(shape), split, jnp.dtype(dtype).name, interpret)
    if key not in _logged:
        _logged.add(key)
        logger.info("FP8 cast-transpose %s split at %d -> %s: Pallas kernel%s", list(shape), split,
                    jnp.dtype(dtype).name, " (interpreted: no GPU)" if interpret else "")
