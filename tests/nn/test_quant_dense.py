"""QuantDense: a drop-in for nnx.Linear, with logical axis names and explicit keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lowprec as lp
from lowprec import ops
from lowprec.nn import QuantDense
from lowprec.ops import Recipe, recipes

X = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 16)), jnp.float32)


def _forward_and_grads(layer, x):
    def loss(layer, x):
        y = layer(x)
        return jnp.sum(jnp.sin(y)), y

    (_, y), (grads, dx) = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True))(layer, x)
    return [y, dx] + jax.tree.leaves(nnx.state(grads, nnx.Param))


@pytest.mark.parametrize("kwargs,x", [
    ({}, X),
    ({"use_bias": False}, X),
    ({"dtype": jnp.bfloat16}, X),
    ({"param_dtype": jnp.bfloat16}, X.astype(jnp.bfloat16)),
])
def test_none_recipe_equals_nnx_linear_bit_for_bit(kwargs, x):
    ours = QuantDense(16, 8, rngs=nnx.Rngs(0), **kwargs)
    theirs = nnx.Linear(16, 8, rngs=nnx.Rngs(0), **kwargs)
    for a, b in zip(jax.tree.leaves(nnx.state(ours, nnx.Param)), jax.tree.leaves(nnx.state(theirs, nnx.Param))):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_forward_and_grads(ours, x), _forward_and_grads(theirs, x)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_bf16_recipe_equals_a_bf16_nnx_linear_on_bf16_inputs():
    ours = QuantDense(16, 8, dtype=jnp.bfloat16, recipe="bf16", rngs=nnx.Rngs(0))
    theirs = nnx.Linear(16, 8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = X.astype(jnp.bfloat16)
    for a, b in zip(_forward_and_grads(ours, x), _forward_and_grads(theirs, x)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_quantized_layer_computes_the_quantized_dot_general():
    layer = QuantDense(16, 8, recipe="fp8", rngs=nnx.Rngs(0))
    want = ops.dot_general(X, layer.kernel[...], (((2,), (0,)), ((), ())), recipes.fp8) + layer.bias[...][None, None]
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(layer, X), want, rtol=1e-6, atol=1e-6)
    assert layer.recipe is recipes.fp8


def test_parameters_carry_logical_axis_names():
    specs = nnx.get_partition_spec(nnx.state(QuantDense(16, 8, rngs=nnx.Rngs(0))))
    assert tuple(specs["kernel"].get_value()) == ("embed", "mlp") and tuple(specs["bias"].get_value()) == ("mlp",)
    layer = QuantDense(16, 8, kernel_axes=("mlp", "embed"), bias_axes=None, rngs=nnx.Rngs(0))
    assert layer.kernel.get_metadata()["out_sharding"] == ("mlp", "embed")
    assert "out_sharding" not in layer.bias.get_metadata()
    mine = QuantDense(16, 8, kernel_metadata={"out_sharding": ("a", "b"), "eager_sharding": False}, rngs=nnx.Rngs(0))
    assert mine.kernel.get_metadata()["out_sharding"] == ("a", "b")
    with pytest.raises(ValueError, match=r"axes \('embed',\) must name each of the 2 dims"):
        QuantDense(16, 8, kernel_axes=("embed",), rngs=nnx.Rngs(0))


def test_stochastic_rounding_takes_an_explicit_key_or_an_rngs_stream():
    sr = lp.Quantizer("e2m1fn", "tensor", rounding="stochastic")
    layer = QuantDense(16, 8, recipe=Recipe(fwd_act=sr), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rounds stochastically in fwd_act"):
        layer(X)
    call = nnx.jit(lambda m, x, k: m(x, key=k))
    a, b = call(layer, X, jax.random.key(1)), call(layer, X, jax.random.key(2))
    np.testing.assert_array_equal(a, call(layer, X, jax.random.key(1)))
    assert not np.array_equal(a, b)
    rngs = nnx.Rngs(quant=3)
    np.testing.assert_array_equal(layer(X, rngs=rngs), layer(X, key=nnx.Rngs(quant=3).quant()))


def test_unknown_recipe_names_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown recipe 'fp5'; known: .*fp8"):
        QuantDense(16, 8, recipe="fp5", rngs=nnx.Rngs(0))
