"""Calibration statistics of the inputs of a model's linear layers, gathered on a few batches.

For each targeted layer (stacked layers get a leading layer axis): the Gram matrix of its input
rows ``X^T X`` (the Hessian of the layer's output error, what GPTQ needs), the largest input
magnitude, and a sample of input rows (for percentile and MSE clipping of activations).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowprec.nn import QuantDense
from lowprec.nn.rules import find_layers, replace_layer

SAMPLE_ROWS = 512  # input rows kept per layer and batch (evenly spaced tokens)


@dataclasses.dataclass
class InputStats:
    """One layer's calibration inputs (numpy; leading axes are stacked layers)."""

    gram: np.ndarray     # (..., in, in) float32: sum over calibration tokens of x x^T
    absmax: np.ndarray   # (...,) largest |x|
    rows: np.ndarray     # (..., n, in) a sample of input rows
    tokens: int          # calibration tokens seen


class _Capture(nnx.Module):
    """Sows its input's Gram matrix, absmax and sampled rows, then calls the wrapped layer."""

    def __init__(self, inner: nnx.Module):
        self.inner = inner

    def __call__(self, inputs, *, key=None, rngs=None):
        x = inputs.reshape(-1, inputs.shape[-1]).astype(jnp.float32)
        every = max(1, x.shape[0] // SAMPLE_ROWS)
        self.sow(nnx.Intermediate, "gram", jnp.matmul(x.T, x, precision=jax.lax.Precision.HIGHEST))
        self.sow(nnx.Intermediate, "absmax", jnp.max(jnp.abs(x)))
        self.sow(nnx.Intermediate, "rows", x[::every][:SAMPLE_ROWS])
        return self.inner(inputs, key=key, rngs=rngs)


def _value(v) -> np.ndarray:
    v = v.get_value() if hasattr(v, "get_value") else v
    return np.asarray(v[0] if isinstance(v, tuple) else v)


def collect(model: nnx.Module, targets: str, batches) -> dict[str, InputStats]:
    """``{layer path: InputStats}`` of every QuantDense matching ``targets`` over ``batches``
    (token arrays ``(B, T)``; the model sees ``tokens[:, :-1]``, as in training)."""
    twin = nnx.clone(model)
    layers = find_layers(twin, targets, QuantDense, what="ptq targets")
    for layer in layers:
        replace_layer(twin, layer, _Capture(layer.module))
    graphdef, state = nnx.split(twin)

    @jax.jit
    def step(state, tokens):
        m = nnx.merge(graphdef, state)
        m(tokens[:, :-1])
        return nnx.pop(m, nnx.Intermediate)

    sums: dict[str, dict] = {}
    tokens_seen = 0
    for tokens in batches:
        tokens = jnp.asarray(tokens)
        tokens_seen += int(tokens.shape[0] * (tokens.shape[1] - 1))
        inter = jax.device_get(step(state, tokens))
        for path, value in nnx.to_flat_state(inter):
            name, stat = "/".join(str(p) for p in path[:-1]), str(path[-1])
            arr = _value(value)
            acc = sums.setdefault(name, {})
            if stat not in acc:
                acc[stat] = arr
            elif stat == "gram":
                acc[stat] = acc[stat] + arr
            elif stat == "absmax":
                acc[stat] = np.maximum(acc[stat], arr)
            else:
                acc[stat] = np.concatenate([acc[stat], arr], axis=-2)
    if not tokens_seen:
        raise ValueError("calibration needs at least one batch")
    return {layer.path: InputStats(tokens=tokens_seen, **sums[layer.path]) for layer in layers}
