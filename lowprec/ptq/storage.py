"""Saving a quantized model with orbax, and what it takes on disk and in memory.

The quantized layers hold packed codes (two 4-bit codes per byte) and their scales; every other
floating-point parameter (embeddings, norms, LM head) is stored in ``dtype`` (bf16 by default),
as the bf16 baseline stores all of them.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from lowprec.nn.packed import QuantizedWeight


def _storable(model: nnx.Module, dtype) -> dict:
    """The model's state as a pure dict, floating-point Params cast to ``dtype``."""
    params = nnx.state(model, nnx.Param)
    params = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    rest = nnx.state(model, nnx.Not(nnx.Param))
    return {"params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest)}


def memory_bytes(model: nnx.Module, dtype=jnp.bfloat16) -> dict:
    """Bytes of the model as stored: quantized weights (codes + scales), the other parameters
    in ``dtype``, and the total."""
    tree = _storable(model, dtype)
    quantized = nnx.state(model, QuantizedWeight)
    q = int(sum(x.nbytes for x in jax.tree.leaves(quantized)))
    total = int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))
    return {"quantized_bytes": q, "other_bytes": total - q, "total_bytes": total}


def disk_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(directory) for f in files)


def save(model: nnx.Module, directory: str, dtype=jnp.bfloat16) -> int:
    """Writes the model (quantized layers as codes and scales) to ``directory`` (a new path);
    returns its size on disk in bytes."""
    directory = os.path.abspath(directory)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory, _storable(model, dtype))
    return disk_bytes(directory)


def load(like: nnx.Module, directory: str) -> nnx.Module:
    """``like`` (a model of the same structure, e.g. quantized with the same spec) with the
    state saved in ``directory``; parameters come back in the model's own dtypes."""
    model = nnx.clone(like)
    target = _storable(model, jnp.bfloat16)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(os.path.abspath(directory), abstract)
    for kind, key in ((nnx.Param, "params"), (nnx.Not(nnx.Param), "rest")):
        state = nnx.state(model, kind)
        dtypes = jax.tree.map(lambda x: x.dtype, nnx.to_pure_dict(state))
        nnx.replace_by_pure_dict(state, jax.tree.map(lambda x, d: jnp.asarray(x, d), restored[key], dtypes))
        nnx.update(model, state)
    return model
