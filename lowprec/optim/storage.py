"""How a tensor is held: a dtype (``"bfloat16"``) or a Quantizer (scaled low-precision codes).

Parameters and optimizer-state fields name their precision with a *storage spec*: a jnp dtype
or dtype name among ``STORAGE_DTYPES``, one of the formats that are exactly such a dtype
(``"bf16"``, ``"fp16"``, ``"fp32"``), or a :class:`~lowprec.quant.Quantizer` for formats that
need a scale to hold tensors (FP8, INT8, NF4, ...). Rounding onto a spec is exact and supports
every rounding mode of :mod:`lowprec.formats`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lowprec import formats
from lowprec.quant import Quantizer

STORAGE_DTYPES = ("float32", "bfloat16", "float16")
_FORMAT_OF_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
Storage = jnp.dtype | Quantizer


def resolve(field: str, spec) -> Storage:
    """The dtype or Quantizer that ``spec`` names; errors name ``field`` and what it accepts."""
    if isinstance(spec, Quantizer):
        return spec
    if spec is None:
        raise ValueError(f"{field} must be a dtype ({', '.join(STORAGE_DTYPES)}) or a Quantizer; got None")
    if isinstance(spec, formats.Format):
        return _dtype_of_format(field, spec)
    if isinstance(spec, str) and _is_format_name(spec):
        return _dtype_of_format(field, formats.get(spec))
    try:
        dtype = jnp.dtype(spec)
    except TypeError:
        raise ValueError(f"unknown {field} {spec!r}; known: {', '.join(STORAGE_DTYPES)}, "
                         "'bf16', 'fp16', 'fp32', or a Quantizer") from None
    if dtype.name not in STORAGE_DTYPES:
        raise ValueError(f"{field}={dtype.name} is not a storage dtype; known: {', '.join(STORAGE_DTYPES)}, "
                         "or a Quantizer for other formats")
    return dtype


def _is_format_name(name: str) -> bool:
    try:
        formats.get(name)
    except ValueError:
        return False
    return True


def _dtype_of_format(field: str, fmt: formats.Format) -> jnp.dtype:
    for dtype_name, format_name in _FORMAT_OF_DTYPE.items():
        if fmt == formats.get(format_name):
            return jnp.dtype(dtype_name)
    raise ValueError(f"{field}={fmt.name!r} is a number format that needs a scale to hold tensors; pass a "
                     f"Quantizer, e.g. lp.Quantizer({fmt.name!r}, granularity='tensor'), "
                     f"or a dtype: {', '.join(STORAGE_DTYPES)}")


def round_onto(spec: Storage, x32: jax.Array, rounding: str, key, container) -> jax.Array:
    """fp32 ``x32`` rounded onto ``spec``'s grid, held in ``container`` (the leaf's dtype).

    A dtype spec rounds with ``rounding`` (saturating at its max, as a parameter update
    should); a Quantizer spec fake-quantizes with its own settings.
    """
    if isinstance(spec, Quantizer):
        return spec(x32, key=key).astype(container)
    if spec == jnp.float32:
        return x32
    fmt = formats.get(_FORMAT_OF_DTYPE[spec.name])
    return fmt.quantize(x32, rounding=rounding, key=key).astype(spec)


def leaf_keys(key, count: jax.Array, tree) -> list:
    """One PRNG key per leaf of ``tree``, folded from ``key`` and the step ``count``."""
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(key)
    step_key = jax.random.fold_in(key, count)
    return [jax.random.fold_in(step_key, i) for i in range(len(jax.tree.leaves(tree)))]
