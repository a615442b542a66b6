"""Gradients through layers stacked with nnx.vmap and run with nnx.scan (and nnx.remat)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lowprec.nn import QuantDense
from lowprec.ops import dot_general, recipes

LAYERS, WIDTH = 3, 16


@nnx.vmap(in_axes=0, out_axes=0)
def _stack(key):
    return QuantDense(WIDTH, WIDTH, recipe="fp8", rngs=nnx.Rngs(key))


def _reference_loss(kernels, biases, x):
    def step(h, kb):
        return jnp.tanh(dot_general(h, kb[0], (((1,), (0,)), ((), ())), recipes.fp8) + kb[1][None]), None

    return jnp.sum(jax.lax.scan(step, x, (kernels, biases))[0] ** 2)


@pytest.mark.parametrize("remat", [False, True])
def test_grads_through_nnx_scan_over_stacked_layers(remat):
    layers = _stack(jax.random.split(jax.random.key(0), LAYERS))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, WIDTH)), jnp.float32)

    def layer_fn(h, layer):
        return jnp.tanh(layer(h))

    scan = nnx.scan(nnx.remat(layer_fn) if remat else layer_fn, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    grads = nnx.jit(nnx.grad(lambda m, x: jnp.sum(scan(x, m) ** 2)))(layers, x)
    kernels, biases = layers.kernel.get_value(), layers.bias.get_value()
    want_k, want_b = jax.jit(jax.grad(_reference_loss, (0, 1)))(kernels, biases, x)
    assert grads["kernel"].get_value().shape == (LAYERS, WIDTH, WIDTH)
    np.testing.assert_allclose(grads["kernel"].get_value(), want_k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["bias"].get_value(), want_b, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(want_k).max()) > 0
