"""Tiny problems shared by the optim tests: linear regression, a 2-layer MLP, a jitted loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lowprec.optim import scale_loss

# Linear regression y = X w*, 16 weights that start in [1.25, 1.75] (bf16 ulp 2**-7 there) and
# move by ~0.1 each: a step below 2**-8 is below half an ulp, so round-to-nearest loses it.
_rng = np.random.default_rng(0)
REG_X = _rng.normal(size=(256, 16)).astype(np.float32)
REG_W0 = np.asarray(jnp.asarray(_rng.uniform(1.25, 1.75, 16), jnp.bfloat16), np.float32)
REG_WSTAR = np.clip(REG_W0 + _rng.normal(0.0, 0.1, 16), 1.05, 1.95).astype(np.float32)
REG_Y = REG_X @ REG_WSTAR


def reg_loss(w):
    """Half the mean squared error, computed in fp32 from weights of any dtype."""
    r = REG_X @ w.astype(jnp.float32) - REG_Y
    return 0.5 * jnp.mean(r * r)


def mlp_params(din: int, dh: int, dout: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {"w1": (rng.normal(size=(din, dh)) / np.sqrt(din)).astype(np.float32),
            "b1": np.zeros((1, dh), np.float32),
            "w2": (rng.normal(size=(dh, dout)) / np.sqrt(dh)).astype(np.float32),
            "b2": np.zeros((1, dout), np.float32)}


def mlp_data(din: int, dh: int, dout: int, batch: int, seed: int = 2):
    """Inputs and the targets of a random teacher MLP of the same shape."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, din)).astype(np.float32)
    t = mlp_params(din, dh, dout, seed + 1)
    return x, (np.tanh(x @ t["w1"]) @ t["w2"]).astype(np.float32)


def mlp_apply(p, x_BxD, dtype):
    """The MLP computed in ``dtype`` (parameters and inputs cast to it); fp32 output."""
    p = jax.tree.map(lambda a: a.astype(dtype), p)
    h_BxH = jnp.tanh(x_BxD.astype(dtype) @ p["w1"] + p["b1"])
    return (h_BxH @ p["w2"] + p["b2"]).astype(jnp.float32)


def train_body(tx, params, loss, steps: int, scaled: bool = False):
    """``steps`` updates of ``params`` on ``loss``; returns (params, opt_state, per step: the loss
    before it, its largest |gradient| and largest applied |update|). ``scaled``: differentiate
    ``scale_loss`` (the gradients are then those of the scaled loss)."""
    def step(carry, _):
        p, st = carry
        objective = (lambda q: scale_loss(loss(q), st)) if scaled else loss
        g = jax.grad(objective)(p)
        u, st = tx.update(g, st, p)
        return (optax.apply_updates(p, u), st), (loss(p), _biggest(g), _biggest(u))

    (params, state), per_step = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params, state, *per_step


def _biggest(tree):
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]))


train = jax.jit(train_body, static_argnums=(0, 2, 3, 4))
