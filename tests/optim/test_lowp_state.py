"""Low-precision optimizer state: Adam's moments stored through Quantizers round-trip exactly,
take the memory their formats say, and train a small MLP within a stated tolerance of fp32 Adam."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optim_problems import mlp_apply, mlp_data, mlp_params, train

import lowprec as lp
from lowprec.optim import QuantizedState, quantized_state, state_nbytes

Q = lp.Quantizer
DIMS = (16, 256, 256)  # last axes are multiples of the block sizes
X, Y = mlp_data(*DIMS, batch=128)
P0 = jax.tree.map(jnp.asarray, mlp_params(*DIMS))
ADAM = optax.adam(3e-3)
STEPS = 300
CONFIGS = {
    "fp8-lm: mu e4m3fn, nu fp16 (per tensor)": dict(mu=Q("e4m3fn"), nu=Q("fp16")),
    "8-bit blocks: mu int8/128, nu e4m3fn/256": dict(mu=Q("int8", "block(128)"), nu=Q("e4m3fn", "block(256)")),
}


def loss(p):
    return jnp.mean((mlp_apply(p, X, jnp.float32) - Y) ** 2)


@pytest.fixture(scope="module")
def fp32_losses():
    _, _, losses, _, _ = train(ADAM, P0, loss, STEPS)
    return np.asarray(losses)


def test_state_round_trip():
    q_mu = Q("e4m3fn")
    tx = quantized_state(ADAM, mu=q_mu, nu="float16")
    params = {"w": P0["w2"], "b": P0["b2"]}
    g = jax.tree.map(lambda p: jax.random.normal(jax.random.key(4), p.shape) * 1e-3, params)
    ref_u, ref_state = jax.jit(ADAM.update)(g, ADAM.init(params), params)
    u, state = jax.jit(tx.update)(g, jax.jit(tx.init)(params), params)
    assert isinstance(state, QuantizedState) and int(state.count) == 1
    # The step itself is computed in full precision from the decoded (zero) initial state.
    jax.tree.map(np.testing.assert_array_equal, u, ref_u)
    stored, ref = state.inner_state[0], ref_state[0]
    expected_mu = jax.jit(lambda mu: jax.tree.map(q_mu.quantize, mu))(ref.mu)
    decode = jax.jit(lambda mu: jax.tree.map(lambda q: q.dequantize(), mu, is_leaf=_is_q))
    assert jax.tree.structure(decode(stored.mu)) == jax.tree.structure(ref.mu)
    jax.tree.map(np.testing.assert_array_equal, decode(stored.mu), decode(expected_mu))
    for name in params:
        mu = stored.mu[name]
        assert mu.codes.dtype == jnp.uint8 and mu.codes.shape == params[name].shape
        np.testing.assert_array_equal(mu.codes, expected_mu[name].codes)
        np.testing.assert_array_equal(mu.scale, expected_mu[name].scale)
        assert stored.nu[name].dtype == jnp.float16
        np.testing.assert_array_equal(stored.nu[name], ref.nu[name].astype(jnp.float16))
    assert stored.count == ref.count and stored.count.dtype == jnp.int32


def _is_q(x):
    return isinstance(x, lp.QTensor)


def _block_bytes(shape, block, bits):
    """Codes of a last-axis block layout (the tail block zero-padded) plus one fp32 scale a block."""
    blocks = math.prod(shape[:-1]) * -(-shape[-1] // block)
    return blocks * block * bits // 8 + 4 * blocks


def test_memory_per_parameter(record_property):
    shapes = [p.shape for p in jax.tree.leaves(P0)]
    n = sum(math.prod(s) for s in shapes)
    counts = 4 + 4  # Adam's int32 step count and the wrapper's
    expected = {
        "fp32": (ADAM, 2 * 4 * n + 4),
        "fp8-lm": (quantized_state(ADAM, mu=Q("e4m3fn"), nu=Q("fp16")),
                   sum(math.prod(s) * (1 + 2) + 2 * 4 for s in shapes) + counts),
        "8-bit blocks": (quantized_state(ADAM, mu=Q("int8", "block(128)"), nu=Q("e4m3fn", "block(256)")),
                         sum(_block_bytes(s, 128, 8) + _block_bytes(s, 256, 8) for s in shapes) + counts),
    }
    per_param = {}
    for name, (tx, nbytes) in expected.items():
        assert state_nbytes(jax.eval_shape(tx.init, P0)) == nbytes, name
        per_param[name] = nbytes / n
    record_property("state_bytes_per_parameter", per_param)
    assert per_param["fp32"] == pytest.approx(8.0, abs=1e-3)
    assert per_param["fp8-lm"] < 3.01 and per_param["8-bit blocks"] < 2.05


@pytest.mark.parametrize("name", CONFIGS)
def test_trains_within_tolerance_of_fp32_adam(fp32_losses, name):
    _, state, losses, _, _ = train(quantized_state(ADAM, **CONFIGS[name]), P0, loss, STEPS)
    # Stated tolerance: every step's loss within 25% of fp32 Adam's, which falls by > 100x.
    assert fp32_losses[-1] < 0.01 * fp32_losses[0]
    assert np.max(np.abs(np.log(np.asarray(losses) / fp32_losses))) < np.log(1.25)
    assert all(isinstance(x, lp.QTensor) for x in jax.tree.leaves(state.inner_state[0].mu, is_leaf=_is_q))


def test_second_moment_without_range_breaks_adam(fp32_losses):
    # int8 per tensor rounds most of nu to zero, and mu / (sqrt(0) + eps) explodes: the same
    # tolerance fails by orders of magnitude, which is why nu needs a float format.
    _, _, losses, _, _ = train(quantized_state(ADAM, mu=Q("int8"), nu=Q("int8")), P0, loss, STEPS)
    assert not np.all(np.isfinite(np.asarray(losses))) or losses[-1] > 100 * fp32_losses[-1]
