"""Stochastic rounding: unbiased, always a neighbour, a function of the key only.

Unbiasedness is checked per input against its exact expectation: over n keys the result is
hi with probability p = (x - lo) / (hi - lo), so the sample mean lies within 5 standard errors
(hi - lo) * sqrt(p (1 - p) / n) of x (a chance failure is ~6e-7 per point; the keys are
fixed, so the test is deterministic).
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lowprec as lp

N_KEYS = 4096
# Each format's grid from its definition (REFERENCE.md), and inputs between grid points:
# non-dyadic fractions, exact grid points, both signs.
_E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6])
GRIDS = {
    "e2m1fn": np.unique(np.concatenate([-_E2M1, _E2M1])) + 0.0,
    "int4": np.arange(-7, 8, dtype=np.float64),
    "nf4": np.float32(lp.formats.NF4_VALUES).astype(np.float64),
}
INPUTS = {
    "e2m1fn": [0.1, 0.3, 0.77, 1.2, 1.9, 2.3, 3.71, 5.5, -0.3, -2.6, -4.9, 3.0, -1.5, 0.0],
    "int4": [0.1, 0.5, 1.3, 2.71, 6.9, -0.2, -3.4, -6.5, 4.0, -7.0],
    "nf4": [0.01, 0.1, 0.3, 0.6, 0.9, -0.05, -0.3, -0.8, 0.5626170039176941, -1.0],
}


def _neighbours(name, x64):
    g = GRIDS[name]
    i = np.clip(np.searchsorted(g, x64, side="right") - 1, 0, g.size - 2)
    lo, hi = g[i], g[i + 1]
    on_grid = x64 == lo
    return np.where(on_grid, x64, lo), np.where(on_grid, x64, hi)


def _draw(fmt, x, n=N_KEYS, seed=0, random_bits=None):
    """q(x) under n independent keys: shape (n, x.size), float64."""
    keys = jax.random.split(jax.random.key(seed), n)
    run = jax.jit(jax.vmap(lambda k: fmt.quantize(x, "stochastic", k, random_bits=random_bits)))
    return np.asarray(run(keys), np.float64)


@pytest.mark.parametrize("name", GRIDS)
def test_unbiased_and_always_a_neighbour(name):
    fmt = lp.formats.get(name)
    x = np.asarray(INPUTS[name], np.float32)
    q = _draw(fmt, x)
    x64 = x.astype(np.float64)
    lo, hi = _neighbours(name, x64)
    assert np.all((q == lo) | (q == hi)), name
    p = (x64 - lo) / np.where(hi > lo, hi - lo, 1.0)
    se = (hi - lo) * np.sqrt(p * (1 - p) / N_KEYS)
    err = np.abs(q.mean(axis=0) - x64)
    assert np.all(err <= 5 * se), f"{name}: bias {err} exceeds 5 standard errors {5 * se} at x={x}"
    exact = lo == hi  # grid points never move
    assert np.all(q[:, exact] == x64[exact])


@pytest.mark.parametrize("name", GRIDS)
def test_depends_only_on_the_key(name):
    fmt = lp.formats.get(name)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, 2048).astype(np.float32) * GRIDS[name].max())
    run = jax.jit(lambda k: fmt.quantize(x, "stochastic", k))
    a, b = np.asarray(run(jax.random.key(7))), np.asarray(run(jax.random.key(7)))
    c = np.asarray(run(jax.random.key(8)))
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)


@pytest.mark.parametrize("name", GRIDS)
def test_beyond_the_range_saturates(name):
    fmt, g = lp.formats.get(name), GRIDS[name]
    x = np.asarray([g[-1] * 1.2 + 0.1, g[0] * 1.7 - 0.1, 1e30, -np.inf], np.float32)
    q = _draw(fmt, x, n=64)
    np.testing.assert_array_equal(q, np.broadcast_to([g[-1], g[0], g[-1], g[0]], q.shape))


@pytest.mark.parametrize("name", ["e2m1fn", "int4"])
def test_random_bits_compare_only_the_leading_dropped_bits(name):
    """With r random bits the round-up probability is floor(f * 2**r) / 2**r for the fraction
    f of a step: only the r leading dropped bits take part (hardware uses few)."""
    fmt = lp.formats.get(name)
    x = np.asarray([2.375, 2.75, -2.375], np.float32)  # f = 3/8, 3/4, 3/8 of the step [2, 3]
    frac = np.array([0.375, 0.75, 0.375])
    for r, p_want in [(1, [0.0, 0.5, 0.0]), (2, [0.25, 0.75, 0.25]), (3, frac), (None, frac)]:
        q = _draw(fmt, x, random_bits=r)
        up = np.abs(q) == 3.0
        assert np.all(up | (np.abs(q) == 2.0))
        p_want = np.asarray(p_want)
        se = np.sqrt(p_want * (1 - p_want) / N_KEYS)
        assert np.all(np.abs(up.mean(axis=0) - p_want) <= 5 * se), (name, r, up.mean(axis=0))
    for bad in (0, 32):
        with pytest.raises(ValueError, match="random_bits"):
            fmt.quantize(x, "stochastic", jax.random.key(0), random_bits=bad)


def test_bf16_input_keeps_dtype_and_neighbours():
    fmt = lp.formats.get("e2m1fn")
    x = np.asarray(INPUTS["e2m1fn"], np.float32).astype(ml_dtypes.bfloat16)
    q = np.asarray(jax.jit(lambda k: fmt.quantize(x, "stochastic", k))(jax.random.key(3)))
    assert q.dtype == ml_dtypes.bfloat16
    lo, hi = _neighbours("e2m1fn", x.astype(np.float64))
    q64 = q.astype(np.float64)
    assert np.all((q64 == lo) | (q64 == hi))
