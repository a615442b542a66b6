"""GPTQ against round-to-nearest and float64 references, on constructed layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec.nn import weight_quantizer
from lowprec.ptq import gptq, inverse_hessian_factor


def correlated_inputs(n, d, seed=0):
    """Inputs whose features are strongly correlated (a random mixing of few factors plus noise)."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n, d // 4))
    return (factors @ rng.standard_normal((d // 4, d)) + 0.1 * rng.standard_normal((n, d))).astype(np.float32)


def output_error(x, w, q):
    return float(np.sum((x.astype(np.float64) @ (np.asarray(w, np.float64) - np.asarray(q, np.float64))) ** 2))


@pytest.mark.parametrize("spec", ["int4", "int4:block(16)", "nf4", "int8"])
def test_gptq_beats_round_to_nearest_on_the_layer_output(spec):
    x = correlated_inputs(1024, 64)
    w = np.random.default_rng(1).standard_normal((64, 48)).astype(np.float32)
    q = weight_quantizer(spec)
    rtn = np.asarray(q.quantize(jnp.asarray(w)).dequantize())
    g = np.asarray(gptq(q, jnp.asarray(w), jnp.asarray(x.T @ x)).dequantize())
    e_rtn, e_gptq = output_error(x, w, rtn), output_error(x, w, g)
    assert e_gptq < 0.7 * e_rtn, (e_gptq, e_rtn)


def test_gptq_weights_lie_on_round_to_nearest_grid():
    """Static scales: every weight is an int4 step of its channel's absmax / 7 (numpy), within range."""
    x = correlated_inputs(512, 32, seed=8)
    w = np.random.default_rng(9).standard_normal((32, 12)).astype(np.float32)
    g = np.asarray(gptq(weight_quantizer("int4"), jnp.asarray(w), jnp.asarray(x.T @ x)).dequantize(), np.float64)
    steps = g / (np.abs(w).max(axis=0).astype(np.float64) / 7.0)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-5)
    assert np.abs(np.round(steps)).max() <= 7
    assert not np.array_equal(g, np.asarray(weight_quantizer("int4").quantize(jnp.asarray(w)).dequantize()))


def test_gptq_with_uncorrelated_inputs_is_round_to_nearest():
    """With H proportional to the identity no error is passed on: exactly round-to-nearest's codes."""
    w = jnp.asarray(np.random.default_rng(2).standard_normal((32, 16)), jnp.float32)
    q = weight_quantizer("int4")
    a, b = q.quantize(w), gptq(q, w, 5.0 * jnp.eye(32))
    assert np.array_equal(np.asarray(a.codes), np.asarray(b.codes))
    assert np.array_equal(np.asarray(a.scale), np.asarray(b.scale))


def test_gptq_matches_a_float64_reference_loop():
    """The textbook loop in float64 numpy (int4, per output channel), code for code."""
    x = correlated_inputs(256, 24, seed=3)
    w = np.random.default_rng(4).standard_normal((24, 8)).astype(np.float32)
    h = x.T.astype(np.float64) @ x
    damp = 0.01
    hd = h + damp * np.mean(np.diag(h)) * np.eye(24)
    u = np.linalg.cholesky(np.linalg.inv(hd)).T
    s = np.abs(w).max(axis=0) / 7.0                     # int4 symmetric, one scale per output channel
    work, codes = w.astype(np.float64).copy(), np.zeros_like(w, dtype=np.int64)
    for i in range(24):
        codes[i] = np.clip(np.round(work[i] / s), -7, 7)
        err = (work[i] - codes[i] * s) / u[i, i]
        work[i + 1:] -= np.outer(u[i, i + 1:], err)
    got = gptq(weight_quantizer("int4"), jnp.asarray(w), jnp.asarray(h, jnp.float32), damp)
    values = np.asarray(got.dequantize()) / s
    assert np.array_equal(np.round(values).astype(np.int64), codes)


def test_inverse_hessian_factor_against_numpy():
    x = correlated_inputs(128, 16, seed=5)
    h = x.T @ x
    h[:, 3] = h[3, :] = 0.0                              # an input that is always zero
    u = np.asarray(inverse_hessian_factor(jnp.asarray(h), 0.05), np.float64)
    ref = h.astype(np.float64) + np.diag((np.diag(h) == 0).astype(np.float64))
    ref += 0.05 * np.mean(np.diag(ref)) * np.eye(16)
    assert np.allclose(np.triu(u), u)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(ref), rtol=2e-3, atol=1e-6 * np.abs(np.linalg.inv(ref)).max())


def test_gptq_errors_are_clear():
    q = weight_quantizer("int4")
    with pytest.raises(ValueError, match="kernel .in, out. and its gram"):
        gptq(q, jnp.ones((4, 3)), jnp.eye(3))
    with pytest.raises(ValueError, match="deterministic rounding"):
        gptq(q.replace(rounding="stochastic"), jnp.ones((4, 3)), jnp.eye(4))


def test_gptq_under_jit_and_vmap_equals_per_layer():
    w = jnp.asarray(np.random.default_rng(6).standard_normal((2, 16, 8)), jnp.float32)
    x = correlated_inputs(64, 16, seed=7)
    grams = jnp.stack([jnp.asarray(x.T @ x), jnp.asarray(2 * x.T @ x + np.eye(16, dtype=np.float32))])
    q = weight_quantizer("int4")
    both = jax.jit(jax.vmap(lambda k, g: gptq(q, k, g)))(w, grams)
    for i in range(2):
        assert np.array_equal(np.asarray(both.codes[i]), np.asarray(gptq(q, w[i], grams[i]).codes))
