"""Telemetry of quantized operands: values on constructed inputs, forward and backward roles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowprec as lp
from lowprec.ops import ROLES, Recipe, dot_general, telemetry

DN = (((1,), (0,)), ((), ()))
E4M3_UNSCALED = lp.Quantizer("e4m3fn", source="fixed")  # scale 1: max 448, smallest value 2**-9


def _constructed(n=64):
    """A quarter of the entries above E4M3's max, an eighth below half its smallest value."""
    x = np.full((n, 8), 1.0, np.float32)
    x[: n // 4] = 1000.0
    x[n // 4: n // 4 + n // 8] = 1e-4
    return jnp.asarray(x)


def test_forward_statistics_on_a_constructed_input():
    x, w = _constructed(), jnp.ones((8, 4))
    _, stats = jax.jit(lambda a, b: dot_general(a, b, DN, Recipe(fwd_act=E4M3_UNSCALED), probe=telemetry.probe()))(x, w)
    s = telemetry.as_dict(stats)["fwd_act"]
    assert s["amax"] == 1000.0 and s["saturated"] == 0.25 and s["flushed"] == 0.125 and s["clamped"] == 0.0
    xq = jax.jit(E4M3_UNSCALED)(x)
    want_sqnr = 10 * np.log10(float(jnp.sum(x * x)) / float(jnp.sum((x - xq) ** 2)))
    assert s["sqnr_db"] == pytest.approx(want_sqnr, rel=1e-5)
    x64 = np.asarray(x, np.float64)
    z = (x64 - x64.mean()) / x64.std()
    assert s["max_over_std"] == pytest.approx(1000.0 / x64.std(), rel=1e-5)
    assert s["kurtosis"] == pytest.approx(np.mean(z ** 4), rel=1e-4)
    q64 = np.asarray(xq, np.float64)
    assert s["mse"] == pytest.approx(np.mean((x64 - q64) ** 2), rel=1e-5)
    assert s["cosine"] == pytest.approx(np.sum(x64 * q64) / np.linalg.norm(x64) / np.linalg.norm(q64), rel=1e-6)
    assert telemetry.as_dict(stats)["fwd_weight"] == dict.fromkeys(telemetry.STATS, 0.0)


def test_backward_statistics_arrive_as_the_probes_gradient():
    x, w = jnp.ones((64, 8)), jnp.ones((8, 8))
    g = _constructed()
    recipe = Recipe(dgrad_grad=E4M3_UNSCALED, wgrad_grad=lp.Quantizer("e4m3fn"))

    def loss(probe):
        y, _ = dot_general(x, w, DN, recipe, probe=probe)
        return jnp.sum(y * g)

    s = telemetry.as_dict(jax.jit(jax.grad(loss))(telemetry.probe()))
    assert s["dgrad_grad"]["saturated"] == 0.25 and s["dgrad_grad"]["flushed"] == 0.125
    assert s["wgrad_grad"]["amax"] == 1000.0 and s["wgrad_grad"]["saturated"] == 0.0  # absmax scaling
    assert s["fwd_act"]["amax"] == 0.0 and s["dgrad_weight"]["amax"] == 0.0
    assert all(np.isfinite(v) for row in s.values() for v in row.values())


def test_occ_clamped_fraction_is_reported(rand):
    x = rand(0, (64, 128), df=2)
    _, stats = jax.jit(lambda a: dot_general(a, jnp.ones((128, 4)), DN, "fp4_paper", probe=telemetry.probe()))(x)
    clamped = telemetry.as_dict(stats)["fwd_act"]["clamped"]
    assert clamped == pytest.approx(0.02, abs=0.005)  # 2 (1 - alpha) at alpha = 0.99


def test_kurtosis_of_gaussian_and_heavy_tails(rand):
    """About 3 for Gaussian activations, far above for Student-t(3) ones; finite for tiny gradients."""
    w = jnp.ones((256, 4))
    kurt = {}
    for name, x in (("normal", jax.random.normal(jax.random.key(0), (512, 256))), ("t3", rand(1, (512, 256), df=3)),
                    ("tiny", 1e-30 * jax.random.normal(jax.random.key(2), (512, 256)))):
        _, stats = jax.jit(lambda a: dot_general(a, w, DN, "w8a4", probe=telemetry.probe()))(x)
        kurt[name] = telemetry.as_dict(stats)["fwd_act"]["kurtosis"]
    assert kurt["normal"] == pytest.approx(3.0, abs=0.1) and kurt["t3"] > 6.0
    assert kurt["tiny"] == pytest.approx(3.0, abs=0.1)  # standardized before the fourth power


def test_rows_follow_roles():
    assert telemetry.probe().shape == (len(ROLES), len(telemetry.STATS))
