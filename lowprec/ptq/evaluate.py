"""Held-out loss of a model (quantized or not) on fixed evaluation batches."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowprec.models.llama import cross_entropy


def loss(model: nnx.Module, batches, bytes_per_token: float = 1.0) -> dict:
    """Mean next-token loss (nats) over ``batches`` of ``(tokens (B, T), valid (B,))``, its
    perplexity and bits per byte of text."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, tokens, valid):
        per_seq = cross_entropy(nnx.merge(graphdef, state)(tokens[:, :-1]), tokens[:, 1:], reduce=False)
        w = valid.astype(jnp.float32)
        return jnp.sum(per_seq * w), jnp.sum(w)

    total, count = 0.0, 0.0
    for tokens, valid in batches:
        s, n = step(state, jnp.asarray(tokens), jnp.asarray(valid))
        total, count = total + float(s), count + float(n)
    if not count:
        raise ValueError("evaluation needs at least one valid sequence")
    mean = total / count
    return {"loss": mean, "perplexity": float(np.exp(min(mean, 50.0))),
            "bits_per_byte": mean / math.log(2) / bytes_per_token}
