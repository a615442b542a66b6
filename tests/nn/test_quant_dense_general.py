"""QuantDenseGeneral: a drop-in for nnx.LinearGeneral, and the same numbers as QuantDense on
the flattened contraction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lowprec.nn import QuantDense, QuantDenseGeneral

X = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 8, 6)), jnp.float32)


def test_none_recipe_equals_nnx_linear_general():
    for in_f, out_f, axis in (((8, 6), (2, 5), (-2, -1)), (4, 7, 1), ((4, 6), 3, (1, 3))):
        ours = QuantDenseGeneral(in_f, out_f, axis=axis, rngs=nnx.Rngs(0))
        theirs = nnx.LinearGeneral(in_f, out_f, axis=axis, rngs=nnx.Rngs(0))
        for a, b in zip(jax.tree.leaves(nnx.state(ours, nnx.Param)), jax.tree.leaves(nnx.state(theirs, nnx.Param)),
                        strict=True):
            np.testing.assert_array_equal(a, b)  # same initialization: same parameters
        assert ours(X).shape == theirs(X).shape
        np.testing.assert_allclose(ours(X), theirs(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("recipe", ["fp8", "fp4_paper", "w4a8"])
def test_quantized_equals_quant_dense_on_the_flattened_contraction(recipe):
    general = QuantDenseGeneral((8, 6), (2, 5), axis=(-2, -1), recipe=recipe, rngs=nnx.Rngs(1))
    flat = QuantDense(48, 10, recipe=recipe, rngs=nnx.Rngs(2))
    flat.kernel.set_value(general.kernel.get_value().reshape(48, 10))
    flat.bias.set_value(general.bias.get_value().reshape(10) + 0.5)
    general.bias.set_value(general.bias.get_value() + 0.5)

    def loss(m, x, shape):
        return jnp.sum(jnp.sin(m(x.reshape(shape))))

    y_general, y_flat = general(X), flat(X.reshape(3, 4, 48))
    assert y_general.shape == (3, 4, 2, 5)
    np.testing.assert_array_equal(y_general.reshape(3, 4, 10), y_flat)  # same scales, same rounding
    g_general = nnx.grad(loss)(general, X, X.shape)
    g_flat = nnx.grad(loss)(flat, X, (3, 4, 48))
    np.testing.assert_allclose(g_general["kernel"].get_value().reshape(48, 10), g_flat["kernel"].get_value(),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_general["bias"].get_value().reshape(10), g_flat["bias"].get_value(), rtol=1e-6)
    # and it is quantized: not what the unquantized layer computes
    plain = QuantDenseGeneral((8, 6), (2, 5), axis=(-2, -1), rngs=nnx.Rngs(1))
    plain.bias.set_value(general.bias.get_value())
    assert float(jnp.abs(plain(X) - y_general).max()) > 1e-3


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match=r"in_features \(8, 6\) and axis \(-1,\) must have the same length"):
        QuantDenseGeneral((8, 6), 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="does not support batch_axis .*use QuantEinsum"):
        QuantDenseGeneral(6, 3, batch_axis={0: 3}, rngs=nnx.Rngs(0))
