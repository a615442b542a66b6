"""Gradient estimators: STE, clipped STE, DGE (against an independent float64 f′), user-defined.

``ref_dge`` below is REFERENCE.md §3.1's f′ written from scratch in float64 numpy over the
format's sorted value list (``fmt.values()``), not through ``fmt.neighbors``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowprec as lp
from lowprec.quant import CLIPPED_STE, DGE, Estimator, dge, get_estimator, register_estimator

FORMATS = ("e2m1fn", "int4", "e4m3fn", "nf4")


def ref_dge(xs, values, k=5.0, cap=3.0):
    """f′ = min(cap, (1/k)|2u/δ − 1|^(1/k − 1)) on the interval of ``values`` around ``xs``;
    1/k on the grid and outside [values[0], values[-1]] (where the forward pass saturates)."""
    xs = np.asarray(xs, np.float64)
    i = np.clip(np.searchsorted(values, xs, side="right") - 1, 0, len(values) - 2)
    lo, hi = values[i], values[i + 1]
    inside = (xs > values[0]) & (xs < values[-1]) & (xs != lo)
    with np.errstate(divide="ignore"):
        d = np.minimum(cap, np.abs(2 * (xs - lo) / (hi - lo) - 1) ** (1 / k - 1) / k)
    return np.where(inside, d, 1 / k)


def _probe_points(fmt, rng):
    """Grid points, midpoints and random points (uniform and log-uniform, past the range too)."""
    v = fmt.values()
    mids = (v[:-1] + v[1:]) / 2
    uniform = rng.uniform(1.2 * fmt.min, 1.2 * fmt.max, 4000)
    logu = rng.choice([-1, 1], 4000) * np.exp(rng.uniform(np.log(v[v > 0][0]) - 1, np.log(1.2 * fmt.max), 4000))
    return v.astype(np.float32), mids.astype(np.float32), np.concatenate([uniform, logu]).astype(np.float32)


@pytest.mark.parametrize("k,cap", [(5.0, 3.0), (3.0, 2.0)])
@pytest.mark.parametrize("name", FORMATS)
def test_dge_matches_float64_reference(name, k, cap):
    fmt = lp.formats.get(name)
    derivative = jax.jit(dge(k, cap).derivative, static_argnums=1)
    grid, mids, rand = _probe_points(fmt, np.random.default_rng(0))
    np.testing.assert_array_equal(derivative(grid, fmt), np.float32(1 / k))
    np.testing.assert_array_equal(derivative(mids, fmt), np.float32(cap))
    # fp32 evaluation of |2u/δ − 1| near a midpoint costs a few ulps of xs, magnified by f′'s slope
    np.testing.assert_allclose(derivative(rand, fmt), ref_dge(rand, fmt.values(), k, cap), rtol=1e-4)


def test_quantizer_dge_gradient_contract():
    """jax.grad of sum(q(w)·g) is g·f′(w/s), s the per-output-channel scale amax/6."""
    q = lp.Quantizer(format="e2m1fn", granularity="channel", estimator="dge")
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((64, 48)) * rng.uniform(0.1, 10, 48)).astype(np.float32)
    g = rng.standard_normal(w.shape).astype(np.float32)
    grad = jax.jit(jax.grad(lambda w: jnp.sum(q(w) * g)))(jnp.asarray(w))
    s = np.max(np.abs(w), axis=0, keepdims=True) / np.float32(6.0)
    np.testing.assert_allclose(grad, g * ref_dge(w / s, lp.formats.get("e2m1fn").values()), rtol=1e-4)


def test_quantizer_dge_at_grid_points_and_midpoints():
    """Columns c·[grid, midpoints] with c a power of two: scale c, f′ exactly 0.2 and 3.0."""
    v = lp.formats.get("e2m1fn").values()
    base = np.concatenate([v, (v[:-1] + v[1:]) / 2])
    w = (base[:, None] * 2.0 ** np.arange(-2, 3)).astype(np.float32)
    g = np.random.default_rng(2).standard_normal(w.shape).astype(np.float32)
    q = lp.Quantizer(format="e2m1fn", granularity="channel", estimator="dge")
    grad = jax.jit(jax.grad(lambda w: jnp.sum(q(w) * g)))(jnp.asarray(w))
    want = np.where(np.arange(len(base))[:, None] < len(v), np.float32(0.2), np.float32(3.0))
    np.testing.assert_array_equal(grad, g * want)


@pytest.mark.parametrize("q", [lp.Quantizer("e2m1fn", "channel"), lp.Quantizer("int4", "block(16)"),
                               lp.Quantizer("nf4", "token", scale="pow2_floor")], ids=str)
def test_ste_gradient_is_identity(q):
    x = jax.random.normal(jax.random.key(0), (32, 64)) * 3
    g = jax.random.normal(jax.random.key(1), x.shape)
    np.testing.assert_array_equal(jax.jit(jax.grad(lambda x: jnp.sum(q(x) * g)))(x), g)


def test_clipped_ste_zeros_clipped_entries():
    x = jnp.array([-9.0, -3.0, -2.9, 0.1, 2.0, 3.0, 3.01, 50.0])
    q = lp.Quantizer("e2m1fn", source="fixed", fixed_scale=0.5, estimator="clipped_ste")  # range ±3
    grad = jax.jit(jax.grad(lambda x: jnp.sum(q(x))))(x)
    np.testing.assert_array_equal(grad, [0, 1, 1, 1, 1, 1, 0, 0])


def test_clipped_ste_keeps_the_amax_entry():
    """Under absmax scaling nothing is clipped, even where amax/s rounds above the format's max."""
    x = jax.random.normal(jax.random.key(3), (256, 96)) * jnp.linspace(0.01, 300, 96)[None, :]
    for q in (lp.Quantizer("e2m1fn", "token", estimator="clipped_ste"),
              lp.Quantizer("e4m3fn", "channel", estimator="clipped_ste")):
        np.testing.assert_array_equal(jax.jit(jax.grad(lambda x: jnp.sum(q(x))))(x), 1.0)


def test_clipped_ste_uses_each_formats_range():
    for name in ("int8", "e4m3fn", "nf4"):
        fmt = lp.formats.get(name)
        xs = jnp.array([2 * fmt.min, fmt.min, 0.0, fmt.max, 2 * fmt.max])
        np.testing.assert_array_equal(jax.jit(CLIPPED_STE.derivative, static_argnums=1)(xs, fmt), [0, 1, 1, 1, 0])


def half_outside(xs, fmt):
    """A user-defined estimator: full gradient in the inner half of the range, half outside it."""
    return jnp.where(jnp.abs(xs) <= fmt.max / 2, 1.0, 0.5)


def test_user_defined_estimator_end_to_end():
    x = jax.random.normal(jax.random.key(4), (16, 40))
    g = jax.random.normal(jax.random.key(5), x.shape)
    s = np.max(np.abs(np.asarray(x))) / np.float32(7.0)
    want = g * np.where(np.abs(np.asarray(x) / s) <= 3.5, 1.0, 0.5)
    est = register_estimator(Estimator("half_outside", half_outside))
    for spec in (est, "half_outside", half_outside):
        q = lp.Quantizer("int4", estimator=spec)
        assert "estimator=half_outside" in str(q)
        np.testing.assert_allclose(jax.jit(jax.grad(lambda x: jnp.sum(q(x) * g)))(x), want, rtol=1e-6)


def test_dge_objects_are_values():
    assert get_estimator("dge") == dge() == DGE and str(DGE) == "dge"
    assert str(dge(k=3)) == "dge(k=3)" and str(dge(k=3, cap=2)) == "dge(k=3,cap=2)"
    assert get_estimator("dge(k=3)") == dge(k=3.0) and hash(dge(k=3)) == hash(get_estimator("dge(k=3)"))
    q = lp.Quantizer("e2m1fn", "channel", estimator=dge(k=3))
    assert q == lp.Quantizer("e2m1fn", "channel", estimator="dge(k=3)")
    assert "estimator=dge(k=3)" in str(q)
    grad = jax.jit(jax.grad(lambda w: jnp.sum(q(w))))(jnp.array([[6.0], [1.0], [0.25]]))
    np.testing.assert_allclose(grad[:, 0], [1 / 3, 1 / 3, 3.0], rtol=1e-6)  # grid, grid, midpoint


def test_bad_estimators_name_the_field_and_choices():
    with pytest.raises(ValueError, match=r"unknown estimator 'sgd'; known: clipped_ste, dge, .*ste"):
        lp.Quantizer("e2m1fn", estimator="sgd")
    with pytest.raises(ValueError, match=r"unknown argument 'p'; known: k, cap"):
        get_estimator("dge(p=2)")
    with pytest.raises(ValueError, match=r"dge k must be >= 1"):
        dge(k=0.5)
    with pytest.raises(ValueError, match=r"dge cap must be positive"):
        dge(cap=0)


@pytest.mark.parametrize("k", [3.0, 5.0, 10.0])
def test_dge_mean_over_an_interval_is_the_capped_integral(k):
    """Uncapped, f′ integrates to 1 over an interval (f runs from one grid point to the next);
    the cap takes the spike at the midpoint: the mean is cap·t_c + 1 − t_c^(1/k), t_c = (k·cap)^(−k/(k−1))
    the distance from the midpoint (in half-intervals) where f′ reaches the cap."""
    cap, fmt = 3.0, lp.formats.get("e2m1fn")
    n = 1 << 20
    for lo, hi in ((0.5, 1.0), (2.0, 3.0), (4.0, 6.0)):  # intervals of width 0.5, 1 and 2
        xs = lo + (hi - lo) * (np.arange(n) + 0.5) / n  # midpoint rule
        mean = float(jnp.mean(dge(k, cap).derivative(jnp.asarray(xs, jnp.float32), fmt)))
        tc = (k * cap) ** (-k / (k - 1))
        assert mean == pytest.approx(cap * tc + 1 - tc ** (1 / k), rel=2e-3)


@pytest.mark.parametrize("k,cap", [(5.0, 3.0), (3.0, 2.0), (10.0, 3.0)])
def test_dge_mean_one_averages_one_over_each_interval(k, cap):
    """``mean_one`` divides f′ by its interval mean: the float64 midpoint-rule mean of the
    reference f′ over every interval of E2M1's grid, times the factor, is 1."""
    fmt = lp.formats.get("e2m1fn")
    values = fmt.values().astype(np.float64)
    est = dge(k, cap, mean_one=True)
    assert est.name == f"dge({'k=%g,' % k if k != 5 else ''}{'cap=%g,' % cap if cap != 3 else ''}mean_one=true)"
    assert get_estimator(est.name) == est and est != dge(k, cap)
    n = 200_000
    for lo, hi in zip(values[:-1], values[1:]):
        xs = lo + (hi - lo) * (np.arange(n) + 0.5) / n
        mean = ref_dge(xs, values, k, cap).mean()
        got = np.asarray(est.derivative(xs.astype(np.float32), fmt), np.float64)
        np.testing.assert_allclose(got.mean(), 1.0, rtol=2e-3)  # the quadrature of the 1/t^(1-1/k) spike
        np.testing.assert_allclose(got, ref_dge(xs, values, k, cap) / mean, rtol=2e-3)
    with pytest.raises(ValueError, match="mean_one must be true or false"):
        get_estimator("dge(mean_one=maybe)")
