"""Low-precision optimizer state: chosen state fields (Adam's ``mu``, ``nu``) kept as QTensors.

FP8-LM (Peng et al. 2023) keeps Adam's first moment in FP8 E4M3 and the second in FP16;
8-bit optimizers keep both as int8 codes with one scale per block of 128 or 256 values.
The wrapped optimizer always computes in full precision: each update decodes the stored
fields, runs it, and encodes the new fields, so only the stored state is low precision.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowprec.optim import storage
from lowprec.quant import Quantizer, QTensor


class QuantizedState(NamedTuple):
    """State of :func:`quantized_state`.

    Attributes:
      count: updates so far (int32); stochastic rounding of the stored fields folds it into the key.
      inner_state: the wrapped optimizer's state, its chosen fields' float arrays replaced by
        QTensors (Quantizer fields) or arrays of the chosen dtype (decoded as float32);
        scalars stay as they are.
    """

    count: jax.Array
    inner_state: Any


def quantized_state(inner: optax.GradientTransformation, *, key=None,
                    **fields) -> optax.GradientTransformationExtraArgs:
    """Stores the state fields named in ``fields`` (``mu=``, ``nu=``, ``trace=``, ...) in low precision.

    Each value is a storage spec: a dtype (``"float16"``, ``"bfloat16"``) or a Quantizer,
    e.g. FP8-LM's ``mu=lp.Quantizer("e4m3fn"), nu=lp.Quantizer("fp16")``, or 8-bit blocks
    ``mu=lp.Quantizer("int8", "block(128)")``. A field matches every NamedTuple field of that
    name in the inner state (through chains, ``inject_hyperparams``, ...). A Quantizer's
    granularity applies to each state array as it is (blocks run along the last axis). Keep
    ``nu`` in a format with range (fp16, e4m3fn): a second moment rounded to zero makes a
    step of ``mu / eps``. ``key`` (int seed or PRNG key) is needed by stochastic Quantizers.
    """
    if not fields:
        raise ValueError("quantized_state needs at least one field, e.g. mu=lp.Quantizer('e4m3fn'), nu='float16'")
    specs = {name: storage.resolve(name, spec) for name, spec in fields.items()}
    stochastic = [n for n, s in specs.items() if isinstance(s, Quantizer) and s.rounding == "stochastic"]
    if stochastic and key is None:
        raise ValueError(f"the Quantizer of {', '.join(stochastic)} rounds stochastically: pass key= "
                         "(an int seed or a jax.random.key)")
    inner = optax.with_extra_args_support(inner)

    def init(params):
        inner_state = inner.init(params)
        _check_fields(inner_state, specs)
        count = jnp.zeros([], jnp.int32)
        return QuantizedState(count=count, inner_state=_encode(inner_state, specs, key, count))

    def update(updates, state, params=None, **extra_args):
        new_updates, inner_state = inner.update(updates, _decode(state.inner_state, specs), params, **extra_args)
        count = optax.safe_increment(state.count)
        return new_updates, QuantizedState(count=count, inner_state=_encode(inner_state, specs, key, count))

    return optax.GradientTransformationExtraArgs(init, update)


def state_nbytes(tree) -> int:
    """Bytes that ``tree`` (an optimizer state) stores: QTensors as packed codes plus scales.

    Works on shapes alone, so ``state_nbytes(jax.eval_shape(tx.init, params))`` sizes a
    state without allocating it.
    """
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, QTensor))
    return sum(x.nbytes() if isinstance(x, QTensor) else x.size * jnp.dtype(x.dtype).itemsize for x in leaves)


def _field(path, specs) -> str | None:
    """The outermost named field on ``path`` that ``specs`` stores in low precision (state
    fields come before the parameter tree's own names, which may be anything)."""
    names = [k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey) and k.name in specs]
    return names[0] if names else None


def _encode(inner_state, specs, key, count):
    entries, treedef = jax.tree_util.tree_flatten_with_path(inner_state)
    keys = [None] * len(entries) if key is None else storage.leaf_keys(key, count, inner_state)
    return jax.tree.unflatten(treedef, [_encode_leaf(x, specs.get(_field(path, specs)), k)
                                        for (path, x), k in zip(entries, keys)])


def _encode_leaf(x, spec, key):
    if spec is None or not _stored(x):
        return x
    return spec.quantize(x, key=key) if isinstance(spec, Quantizer) else x.astype(spec)


def _decode(stored, specs):
    def decode(path, x):
        if isinstance(x, QTensor):
            return x.dequantize()
        return x.astype(jnp.float32) if _field(path, specs) and _stored(x) else x

    return jax.tree_util.tree_map_with_path(decode, stored, is_leaf=lambda x: isinstance(x, QTensor))


def _stored(x) -> bool:
    """Whether a state leaf is kept in low precision: float arrays; scalars stay as they are."""
    return jnp.issubdtype(x.dtype, jnp.floating) and x.ndim > 0


def _check_fields(inner_state, specs):
    present = {k.name for path, _ in jax.tree_util.tree_flatten_with_path(inner_state)[0]
               for k in path if isinstance(k, jax.tree_util.GetAttrKey)}
    missing = sorted(set(specs) - present)
    if missing:
        raise ValueError(f"no state field named {', '.join(missing)} in the inner optimizer's state; "
                         f"its fields: {', '.join(sorted(present)) or '(none)'}")
