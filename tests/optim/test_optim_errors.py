"""Bad input to the optim wrappers fails early with a message that says what was expected."""

import jax.numpy as jnp
import optax
import pytest

import lowprec as lp
from lowprec.optim import (LossScaleState, find_state, loss_scaling, master_params, master_weights,
                           quantized_state, scale_loss)

SGD = optax.sgd(0.1)
BF16 = {"w": jnp.ones((2, 3), jnp.bfloat16)}


@pytest.mark.parametrize("kwargs, match", [
    (dict(master_dtype=jnp.int32), "master_dtype=int32 is not a storage dtype; known: float32, bfloat16, float16"),
    (dict(master_dtype="fp(e=4,m=3)"), "master_dtype='fp\\(e=4,m=3\\)' is a number format that needs a scale"),
    (dict(master_dtype=lp.Quantizer("e4m3fn")), "master_dtype must be a dtype"),
    (dict(param_dtype=jnp.float16, master_dtype=jnp.bfloat16),
     "master_dtype=bfloat16 cannot hold every param_dtype=float16 value; use float32"),
    (dict(param_dtype="e4m3fn"), "param_dtype='e4m3fn' is a number format that needs a scale to hold tensors; "
                                 "pass a Quantizer, e.g. lp.Quantizer\\('e4m3fn'"),
    (dict(param_dtype="nf4"), "param_dtype='nf4' is a number format that needs a scale"),
    (dict(param_dtype="bfloat17"), "unknown param_dtype 'bfloat17'; known: float32, bfloat16, float16"),
    (dict(rounding="nearest"), "unknown rounding 'nearest'; known: nearest_even, nearest_away"),
    (dict(rounding="stochastic"), "rounding='stochastic' needs key="),
    (dict(param_dtype=lp.Quantizer("e4m3fn", rounding="stochastic"), rounding="nearest_even"),
     "rounding='nearest_even' conflicts with the param_dtype Quantizer's rounding='stochastic'"),
])
def test_master_weights_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        master_weights(SGD, **kwargs)


def test_master_weights_parameters():
    tx = master_weights(SGD, param_dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match=r"parameter \['w'\] is float32 but param_dtype=bfloat16; cast"):
        tx.init({"w": jnp.ones((2, 3))})
    with pytest.raises(TypeError, match=r"parameter \['n'\] has dtype int32; expected floating point"):
        master_weights(SGD, param_dtype=lp.Quantizer("e4m3fn")).init({"n": jnp.ones(3, jnp.int32)})
    with pytest.raises(ValueError, match="update\\(\\) needs params="):
        tx.update(BF16, tx.init(BF16))


def test_reading_state_that_is_not_there():
    no_master = master_weights(SGD, param_dtype=jnp.bfloat16, master_dtype=None)
    with pytest.raises(ValueError, match="keeps no master copy \\(master_dtype=None\\)"):
        master_params(no_master.init(BF16))
    with pytest.raises(ValueError, match="expected exactly one MasterWeightsState in the optimizer state; found 0"):
        master_params(SGD.init(BF16))
    with pytest.raises(ValueError, match="expected exactly one LossScaleState in the optimizer state; found 0"):
        scale_loss(jnp.float32(1.0), SGD.init(BF16))
    nested = loss_scaling(loss_scaling(SGD)).init(BF16)
    with pytest.raises(ValueError, match="found 2"):
        find_state(nested, LossScaleState)


@pytest.mark.parametrize("kwargs, match", [
    (dict(init_scale=0.0), "init_scale must be positive; got 0.0"),
    (dict(init_scale=0.5), "init_scale=0.5 must lie in \\[min_scale=1.0, max_scale=16777216.0\\]"),
    (dict(growth_factor=1.0), "growth_factor must be > 1; got 1.0"),
    (dict(backoff_factor=1.5), "backoff_factor must be in \\(0, 1\\); got 1.5"),
    (dict(growth_interval=0), "growth_interval must be a positive integer; got 0"),
])
def test_loss_scaling_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loss_scaling(SGD, **kwargs)


def test_quantized_state_arguments():
    adam = optax.adam(1e-3)
    with pytest.raises(ValueError, match="mu='e4m3fn' is a number format that needs a scale"):
        quantized_state(adam, mu="e4m3fn")
    with pytest.raises(ValueError, match="needs at least one field"):
        quantized_state(adam)
    with pytest.raises(ValueError, match="the Quantizer of mu rounds stochastically: pass key="):
        quantized_state(adam, mu=lp.Quantizer("e4m3fn", rounding="stochastic"))
    with pytest.raises(ValueError, match="no state field named momentum in the inner optimizer's state; "
                                         "its fields: count, mu, nu"):
        quantized_state(adam, momentum="float16").init({"w": jnp.ones(3)})
