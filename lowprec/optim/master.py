"""fp32 master weights around any optax optimizer, or rounded updates with no master copy.

Mixed precision (Micikevicius et al. 2017): the model holds low-precision parameters, the
optimizer holds an fp32 master copy and updates it, and the new parameters are the master
rounded back. Without the master, a step below half an ulp of a weight rounds to nothing;
stochastic rounding of the updated weights (no master) is the other known-good option.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowprec.formats import ROUNDING_MODES
from lowprec.optim import storage
from lowprec.optim.find import find_state
from lowprec.quant import Quantizer


class MasterWeightsState(NamedTuple):
    """State of :func:`master_weights`.

    Attributes:
      count: updates applied so far (int32); stochastic rounding folds it into the key.
      master: the master copy of the parameters in ``master_dtype``; None with
        ``master_dtype=None`` (the parameters are then the only copy).
      inner_state: the state of the wrapped optimizer, which sees the master as its params.
    """

    count: jax.Array
    master: Any
    inner_state: Any


def master_weights(inner: optax.GradientTransformation, param_dtype=jnp.bfloat16, master_dtype=jnp.float32,
                   rounding: str | None = None, key=None) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` on float32 gradients and a master copy; parameters are the rounded master.

    ``inner`` is any optax transformation (chains, ``inject_hyperparams``, schedules, weight
    decay); it sees the master weights as ``params``. The returned updates are float32
    parameter deltas, so ``optax.apply_updates(params, updates)`` gives the rounded master:
    exactly for bf16 (fp16) parameters, unless one shrinks by more than 2**16 (2**13) in a
    step, where it is off by at most half an fp32 ulp of its old value (as fp32-held
    parameters may be). ``update`` needs ``params=``.

    Args:
      inner: the optimizer of the master weights.
      param_dtype: how the model holds its parameters: ``"bfloat16"``, ``"float16"``,
        ``"float32"`` (or ``"bf16"``, ``"fp16"``, a jnp dtype), or a Quantizer for scaled
        formats (FP8 weights, as FP8-LM's O3), whose values the parameters hold in their own
        dtype (a power-of-two scale rule keeps them exact in bf16).
      master_dtype: dtype of the master copy (``float32``, or ``bfloat16``/``float16`` when
        they hold every parameter value), or None for no master copy: the parameters are
        updated in place and rounded with ``rounding``.
      rounding: how updated weights are rounded onto ``param_dtype`` (a rounding mode of
        ``lowprec.formats``); default ``"nearest_even"``, or a Quantizer's own rounding.
      key: an int seed or PRNG key for stochastic rounding; each step folds in its count and
        each leaf its index.
    """
    target = storage.resolve("param_dtype", param_dtype)
    master = _master_dtype(master_dtype, target)
    rounding = _rounding(rounding, target)
    if rounding == "stochastic" and key is None:
        raise ValueError("rounding='stochastic' needs key= (an int seed or a jax.random.key)")
    inner = optax.with_extra_args_support(inner)

    def init(params):
        _check_params(params, target)
        dtype = jnp.float32 if master is None else master
        weights = jax.tree.map(lambda p: jnp.array(p, dtype=dtype, copy=True), params)
        return MasterWeightsState(count=jnp.zeros([], jnp.int32), master=None if master is None else weights,
                                  inner_state=inner.init(weights))

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("master_weights: update() needs params= (the current parameters; "
                             "the updates it returns are deltas from them)")
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), updates)
        weights = state.master if master is not None else jax.tree.map(lambda p: p.astype(jnp.float32), params)
        steps, inner_state = inner.update(grads, state.inner_state, weights, **extra_args)
        new_weights = jax.tree.map(lambda w, s: (w + s).astype(w.dtype), weights, steps)
        new_params = _round_tree(new_weights, params, target, rounding, key, state.count)
        deltas = jax.tree.map(lambda n, p: n.astype(jnp.float32) - p.astype(jnp.float32), new_params, params)
        return deltas, MasterWeightsState(count=optax.safe_increment(state.count),
                                          master=None if master is None else new_weights, inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


def master_params(opt_state):
    """The master weights that :func:`master_weights` keeps inside ``opt_state`` (for
    evaluation and checkpoints); raises if it keeps none."""
    state = find_state(opt_state, MasterWeightsState)
    if state.master is None:
        raise ValueError("this optimizer keeps no master copy (master_dtype=None): the parameters are the weights")
    return state.master


def _round_tree(weights, params, target, rounding, key, count):
    leaves, treedef = jax.tree.flatten(weights)
    keys = storage.leaf_keys(key, count, weights) if rounding == "stochastic" else [None] * len(leaves)
    containers = [p.dtype for p in jax.tree.leaves(params)]
    return jax.tree.unflatten(treedef, [storage.round_onto(target, w.astype(jnp.float32), rounding, k, c)
                                        for w, k, c in zip(leaves, keys, containers)])


def _master_dtype(spec, target):
    if spec is None:
        return None
    dtype = storage.resolve("master_dtype", spec)
    if isinstance(dtype, Quantizer):
        raise ValueError(f"master_dtype must be a dtype ({', '.join(storage.STORAGE_DTYPES)}) or None; got {dtype}")
    if not isinstance(target, Quantizer):
        m, p = jnp.finfo(dtype), jnp.finfo(target)
        if m.nmant < p.nmant or m.maxexp < p.maxexp or m.minexp > p.minexp:
            raise ValueError(f"master_dtype={dtype.name} cannot hold every param_dtype={target.name} value; "
                             "use float32")
    return dtype


def _rounding(rounding, target):
    if isinstance(target, Quantizer):
        if rounding is not None and rounding != target.rounding:
            raise ValueError(f"rounding={rounding!r} conflicts with the param_dtype Quantizer's "
                             f"rounding={target.rounding!r}; set it on the Quantizer")
        return target.rounding
    rounding = "nearest_even" if rounding is None else rounding
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding {rounding!r}; known: {', '.join(ROUNDING_MODES)}")
    return rounding


def _check_params(params, target):
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.result_type(p)
        name = jax.tree_util.keystr(path) or "(root)"
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"master_weights: parameter {name} has dtype {dtype.name}; expected floating point")
        if not isinstance(target, Quantizer) and dtype != target:
            raise ValueError(f"master_weights: parameter {name} is {dtype.name} but param_dtype={target.name}; "
                             "cast the parameters first (Policy.cast_to_param)")
