"""The precision policy: one config string selects dtypes and the optimizer wrappers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lowprec.optim import (PRESETS, LossScaleState, MasterWeightsState, Policy, find_state, get_policy,
                           loss_scaling, master_weights)


def test_presets_and_key_value_strings_agree():
    assert get_policy("param=bf16,compute=bf16,master=fp32") == PRESETS["bf16_master"]
    assert get_policy("param=float16, compute=float16, master=float32, loss_scale=dynamic") == PRESETS["fp16_master"]
    assert get_policy("compute=bf16") == PRESETS["mixed_bf16"]
    # The training config's defaults (configs/lm.py: master="fp32", param_dtype="float32").
    assert Policy(param_dtype="float32", master_dtype="fp32").param_dtype == "float32"
    assert get_policy(PRESETS["fp32"]) is PRESETS["fp32"]


def test_casts_touch_only_floating_leaves():
    policy = get_policy("fp16_master")
    tree = {"w": jnp.ones((2, 3), jnp.float32), "step": jnp.zeros([], jnp.int32), "mask": jnp.ones(3, bool)}
    assert policy.cast_to_compute(tree)["w"].dtype == jnp.float16
    assert policy.cast_to_param(tree)["w"].dtype == jnp.float16
    assert policy.cast_to_output(tree)["w"].dtype == jnp.float32
    for cast in (policy.cast_to_compute, policy.cast_to_output):
        assert cast(tree)["step"].dtype == jnp.int32 and cast(tree)["mask"].dtype == jnp.bool_


@pytest.mark.parametrize("name", ["fp32", "mixed_bf16"])
def test_fp32_parameters_keep_the_plain_optimizer(name):
    params = {"w": jnp.ones((4, 4))}
    inner = optax.adam(1e-3)
    state = get_policy(name).optimizer(inner).init(params)
    assert jax.tree.structure(state) == jax.tree.structure(inner.init(params))


def test_fp16_master_policy_is_loss_scaling_around_master_weights():
    params = {"w": jnp.linspace(-1, 1, 12, dtype=jnp.float16).reshape(3, 4)}
    inner = optax.adam(1e-2)
    policy = get_policy("fp16_master")
    by_policy = policy.optimizer(inner)
    by_hand = loss_scaling(master_weights(inner, param_dtype=jnp.float16), policy.init_scale)
    states = [tx.init(params) for tx in (by_policy, by_hand)]
    assert isinstance(states[0], LossScaleState) and isinstance(states[0].inner_state, MasterWeightsState)
    for i in range(3):
        g = {"w": jnp.full((3, 4), 2.0 ** i, jnp.float16)}
        (u0, states[0]), (u1, states[1]) = (jax.jit(tx.update)(g, s, params)
                                            for tx, s in zip((by_policy, by_hand), states))
        np.testing.assert_array_equal(u0["w"], u1["w"])
    assert float(find_state(states[0], LossScaleState).scale) == policy.init_scale


def test_stochastic_policy_needs_a_key():
    with pytest.raises(ValueError, match="key="):
        get_policy("bf16_sr").optimizer(optax.sgd(0.1))
    tx = get_policy("bf16_sr").optimizer(optax.sgd(0.1), key=0)
    assert isinstance(tx.init({"w": jnp.ones(3, jnp.bfloat16)}), MasterWeightsState)


@pytest.mark.parametrize("spec, match", [
    ("bf17", "unknown policy 'bf17'; known: bf16_master, bf16_pure"),
    ("param=bf16,foo=1", "key one of param, compute, output, master"),
    ("param=bf16,init_scale=big", "init_scale='big' must be a number"),
    ("loss_scale=auto", "unknown loss_scale 'auto'; known: none, static, dynamic"),
    ("rounding=nearest", "unknown rounding 'nearest'; known: nearest_even"),
    ("compute=e4m3fn", "compute_dtype='e4m3fn' is a number format that needs a scale"),
    ("param=int8", "param_dtype='int8' is a number format that needs a scale"),
    ("output=float64", "output_dtype=float64 is not a storage dtype; known: float32, bfloat16, float16"),
    ("rounding=stochastic", "needs low-precision parameters"),
    ("master=bf16", "master_dtype=bfloat16 is coarser than param_dtype=float32"),
])
def test_bad_policies_say_what_is_expected(spec, match):
    with pytest.raises(ValueError, match=match):
        get_policy(spec)
