"""OCC in the GEMM: clamping, the compensation GEMM, and their gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec.ops import dot_general, recipes
from lowprec.quant.occ import clamp

DN = (((1,), (0,)), ((), ()))


def _rel_error(y, ref):
    return float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))


def test_compensation_brings_the_output_closer_to_the_unquantized_one(rand):
    x, w = rand(0, (64, 256), df=2), rand(1, (256, 32)) / 16
    ref = x @ w

    def err(**kwargs):
        recipe = recipes.fp4(4, 8, **kwargs).replace(compute_dtype="float32")
        return _rel_error(jax.jit(lambda a, b: dot_general(a, b, DN, recipe))(x, w), ref)

    direct = err()
    clamp_only = err(occ_alpha=0.99, compensate=False)
    separate = err(occ_alpha=0.99)
    fused = err(occ_alpha=0.99, compensation="fused")
    assert separate < clamp_only and fused < clamp_only and separate < direct
    assert err(occ_alpha=0.97) < separate  # a smaller alpha clamps more and compensates more


def test_separate_compensation_is_the_residual_times_the_unquantized_weight(rand):
    x, w = rand(0, (16, 64), df=2), rand(1, (64, 8))
    recipe = recipes.fp4(8, 8, occ_alpha=0.9).replace(compute_dtype="float32")
    occ = recipe.fwd_act.occ
    clamp_only_recipe = recipes.fp4(8, 8, occ_alpha=0.9, compensate=False).replace(compute_dtype="float32")
    with_comp = jax.jit(lambda a, b: dot_general(a, b, DN, recipe))(x, w)
    clamp_only = jax.jit(lambda a, b: dot_general(a, b, DN, clamp_only_recipe))(x, w)
    _, residual = jax.jit(lambda a: clamp(a, occ))(x)
    want = residual.astype(jnp.bfloat16).astype(jnp.float32) @ w.astype(jnp.bfloat16).astype(jnp.float32)
    np.testing.assert_allclose(with_comp - clamp_only, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compensate", [True, False])
def test_the_clamp_passes_the_gradient_as_the_identity(compensate, rand):
    """As in Quantizer and the paper: every entry, clamped or not, gets the STE gradient."""
    x, w = rand(0, (16, 64), df=2), rand(1, (64, 8))
    recipe = recipes.fp4(8, 8, occ_alpha=0.9, compensate=compensate).replace(
        dgrad_grad=None, wgrad_grad=None, compute_dtype="float32")
    dx = jax.jit(jax.grad(lambda a: jnp.sum(dot_general(a, w, DN, recipe))))(x)
    _, residual = jax.jit(lambda a: clamp(a, recipe.fwd_act.occ))(x)
    assert 0.1 < float(jnp.mean(residual != 0)) < 0.3
    full = np.broadcast_to(np.asarray(jnp.sum(jax.jit(recipe.fwd_weight)(w), axis=1)), x.shape)  # 1 @ Wq^T
    np.testing.assert_allclose(dx, full, rtol=1e-5, atol=1e-5)


def test_separate_compensation_adds_its_weight_gradient(rand):
    x, w, g = rand(0, (16, 64), df=2), rand(1, (64, 8)), jnp.ones((16, 8))
    recipe = recipes.fp4(8, 8, occ_alpha=0.9).replace(dgrad_grad=None, wgrad_grad=None, compute_dtype="float32")
    dw = jax.jit(jax.grad(lambda b: jnp.sum(dot_general(x, b, DN, recipe) * g)))(w)
    xc, residual = jax.jit(lambda a: clamp(a, recipe.fwd_act.occ))(x)
    xq = jax.jit(recipe.fwd_act.replace(occ=None))(xc)
    want = xq.T @ g + residual.astype(jnp.float32).T @ g
    np.testing.assert_allclose(dw, want, rtol=1e-2, atol=1e-2)
