"""The layer scan unrolled (``scan_unroll=0``, the default) or looped computes the same model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lowprec.models import llama


def _loss_and_grads(unroll: int):
    cfg = llama.LlamaConfig(d_model=64, n_layers=3, n_heads=2, n_kv_heads=1, d_ff=128, max_seq_len=32,
                            dtype="float32", scan_unroll=unroll)
    model = llama.Llama(cfg, nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, cfg.vocab_size)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1])
        return jnp.mean(llama.cross_entropy(logits, tokens[:, 1:]))

    value, grads = jax.value_and_grad(loss)(params)
    return value, jax.tree.leaves(grads)


def test_unrolled_and_looped_layers_agree():
    ref_loss, ref_grads = _loss_and_grads(1)  # one layer per loop iteration: a loop of 3
    for unroll in (0, 2):  # all layers (no loop); 2 per iteration (a remainder of 1)
        loss, grads = _loss_and_grads(unroll)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        for g, r in zip(grads, ref_grads):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(r))))


def test_negative_unroll_is_refused():
    with pytest.raises(ValueError, match="scan_unroll"):
        llama.LlamaConfig(scan_unroll=-1)
