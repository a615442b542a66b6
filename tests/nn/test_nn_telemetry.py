"""Per-layer telemetry: forward roles sown as intermediates, backward roles as a gradient."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lowprec as lp
from lowprec.nn import GradTelemetry, QuantDense
from lowprec.ops import Recipe, telemetry

E4M3_UNSCALED = lp.Quantizer("e4m3fn", source="fixed")  # scale 1: max 448, smallest value 2**-9


def _constructed():
    x = np.ones((64, 8), np.float32)
    x[:16] = 1000.0  # a quarter saturates
    x[16:24] = 1e-4  # an eighth flushes to zero
    return jnp.asarray(x)


def test_forward_and_backward_telemetry_of_a_layer():
    recipe = Recipe(fwd_act=E4M3_UNSCALED, dgrad_grad=E4M3_UNSCALED)
    layer = QuantDense(8, 8, use_bias=False, recipe=recipe, telemetry=True, rngs=nnx.Rngs(0))
    x, g = _constructed(), _constructed()

    def loss(layer, x):
        return jnp.sum(nnx.capture(layer, nnx.Intermediate)(x)[0] * g)

    @nnx.jit
    def step(layer, x):
        _, sown = nnx.capture(layer, nnx.Intermediate)(x)
        grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Any(nnx.Param, GradTelemetry)))(layer, x)
        return sown, grads

    sown, grads = step(layer, x)
    forward = telemetry.as_dict(sown["telemetry"].get_value()[0])
    backward = telemetry.as_dict(grads["grad_telemetry"].get_value())
    assert forward["fwd_act"]["saturated"] == 0.25 and forward["fwd_act"]["flushed"] == 0.125
    assert forward["fwd_act"]["amax"] == 1000.0
    assert backward["dgrad_grad"]["saturated"] == 0.25 and backward["dgrad_grad"]["flushed"] == 0.125
    assert backward["fwd_act"]["amax"] == 0.0
    assert grads["kernel"].get_value().shape == (8, 8)


def test_telemetry_is_off_by_default():
    layer = QuantDense(8, 8, recipe="fp8", rngs=nnx.Rngs(0))
    assert layer.grad_telemetry is None
    _, sown = nnx.capture(layer, nnx.Intermediate)(jnp.ones((2, 8)))
    assert "telemetry" not in sown
    assert not jax.tree.leaves(nnx.state(layer, GradTelemetry))
