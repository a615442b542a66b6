"""QuantEinsum: a drop-in for nnx.Einsum (attention projections)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowprec.nn import QuantEinsum

X = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 16)), jnp.float32)


def test_none_recipe_equals_nnx_einsum():
    ours = QuantEinsum("btd,dnh->btnh", (16, 2, 4), (2, 4), rngs=nnx.Rngs(0))
    theirs = nnx.Einsum("btd,dnh->btnh", (16, 2, 4), (2, 4), rngs=nnx.Rngs(0))
    for a, b in zip(jax.tree.leaves(nnx.state(ours, nnx.Param)), jax.tree.leaves(nnx.state(theirs, nnx.Param))):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ours(X), theirs(X), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours(X[0], "td,dnh->tnh"), theirs(X[0], "td,dnh->tnh"), rtol=1e-6, atol=1e-6)


def test_quantized_attention_projection_trains():
    layer = QuantEinsum("...d,dnh->...nh", (16, 2, 4), (2, 4), recipe="fp8", kernel_axes=("embed", "heads", None),
                        bias_axes=("heads", None), rngs=nnx.Rngs(0))
    grads = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) ** 2)))(layer, X)
    assert layer(X).shape == (2, 5, 2, 4)
    assert grads["kernel"].get_value().shape == (16, 2, 4) and float(jnp.abs(grads["bias"].get_value()).min()) > 0
    assert layer.kernel.get_metadata()["out_sharding"] == ("embed", "heads", None)
