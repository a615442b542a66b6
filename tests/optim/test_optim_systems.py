"""The wrappers together under jit: on a parameter tree sharded over 8 fake CPU devices, and
through an orbax save/restore of the optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import lowprec as lp
from lowprec.optim import LossScaleState, find_state, loss_scaling, master_params, master_weights, quantized_state

# bf16 parameters, an fp32 master rounded stochastically, AdamW with FP8/fp16 moments, and
# dynamic loss scaling: every piece of state the wrappers keep.
TX = loss_scaling(
    master_weights(quantized_state(optax.adamw(1e-2, weight_decay=1e-2), mu=lp.Quantizer("e4m3fn"),
                                   nu=lp.Quantizer("fp16")),
                   param_dtype=jnp.bfloat16, rounding="stochastic", key=0),
    init_scale=2.0 ** 8, growth_interval=2)
STEPS = 4
INF_STEP = 2


def _step(params, state, grads):
    updates, state = TX.update(grads, state, params)
    return optax.apply_updates(params, updates), state


step = jax.jit(_step)


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w": jax.random.normal(k1, (64, 32)).astype(jnp.bfloat16),
              "b": (0.1 * jax.random.normal(k2, (1, 32))).astype(jnp.bfloat16)}
    return jax.device_put(params, jax.devices()[0])  # committed, like arrays orbax restores


def _grads(params):
    out = []
    for i in range(STEPS):
        keys = jax.random.split(jax.random.key(100 + i))
        g = {k: (2.0 ** 8 * jax.random.normal(kk, p.shape)).astype(jnp.bfloat16)
             for (k, p), kk in zip(sorted(params.items()), keys)}
        if i == INF_STEP:
            g["b"] = g["b"].at[0, 5].set(jnp.inf)
        out.append(jax.device_put(g, jax.devices()[0]))
    return out


def _run(params, state, grads, step_fn=step):
    for g in grads:
        params, state = step_fn(params, state, g)
    return params, state


def _assert_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def one_device():
    """Parameters, gradients, and the state after every step on one device."""
    params, grads = _params(), _grads(_params())
    return params, grads, _run(params, jax.jit(TX.init)(params), grads)


def test_sharded_parameter_tree_matches_one_device(one_device):
    params, grads, expected = one_device
    mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
    assert mesh.size == 8
    shardings = {"w": NamedSharding(mesh, PartitionSpec("data", None)), "b": NamedSharding(mesh, PartitionSpec())}
    sharded = jax.device_put(params, shardings)
    state = jax.jit(TX.init)(sharded)
    for name, sharding in shardings.items():  # the master copy is laid out like the parameters
        assert master_params(state)[name].sharding.is_equivalent_to(sharding, 2)
    # As a trainer does, keep every step's outputs laid out like its inputs.
    sharded_step = jax.jit(_step, out_shardings=jax.tree.map(lambda x: x.sharding, (sharded, state)))
    p8, s8 = _run(sharded, state, [jax.device_put(g, shardings) for g in grads], sharded_step)
    _assert_identical((p8, s8), expected)
    assert p8["w"].sharding.is_equivalent_to(shardings["w"], 2)
    assert int(find_state(s8, LossScaleState).skipped_steps) == 1


def test_orbax_restore_continues_bit_identically(one_device, tmp_path):
    params, grads, expected = one_device
    half = _run(params, jax.jit(TX.init)(params), grads[:INF_STEP + 1])
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", half)
        checkpointer.wait_until_finished()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), half)
        restored = checkpointer.restore(tmp_path / "ckpt", abstract)
    _assert_identical(restored, half)
    _assert_identical(_run(*restored, grads[INF_STEP + 1:]), expected)
