"""lowprec.ops.dot_general: exact where nothing is quantized, each role's quantizer applied where it is."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import lowprec as lp
from lowprec.ops import ROLES, Recipe, dot_general, recipes

DN_2D = (((1,), (0,)), ((), ()))
DIMENSION_NUMBERS = {
    "dense": ((2, 16, 32), (32, 8), (((2,), (0,)), ((), ()))),
    "batched": ((4, 5, 6), (4, 6, 3, 2), (((2,), (1,)), ((0,), (0,)))),
    "two_contractions": ((3, 4, 5), (5, 7, 3), (((2, 0), (0, 2)), ((), ()))),
}
FP32_IDENTITY = lp.Quantizer("fp32", source="fixed")  # scale 1 onto fp32's grid: the identity on fp32


def _value_and_vjp(fn, x, w, g):
    """(fn(x, w), d/dx, d/dw) for the output cotangent g, compiled."""
    def run(x, w, g):
        y, vjp = jax.vjp(fn, x, w)
        return (y,) + vjp(g.astype(y.dtype))
    return jax.jit(run)(x, w, g)


@pytest.mark.parametrize("case", DIMENSION_NUMBERS)
@pytest.mark.parametrize("name,dtype", [("none", jnp.float32), ("bf16", jnp.bfloat16)])
def test_unquantized_recipes_equal_lax_dot_general_bit_for_bit(case, name, dtype, rand):
    xs, ws, dn = DIMENSION_NUMBERS[case]
    x, w = rand(0, xs, dtype), rand(1, ws, dtype)
    g = rand(2, lax.dot_general(x, w, dn).shape, dtype)
    got = _value_and_vjp(lambda a, b: dot_general(a, b, dn, name), x, w, g)
    want = _value_and_vjp(lambda a, b: lax.dot_general(a, b, dn), x, w, g)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_bf16_recipe_on_fp32_inputs_is_a_bf16_gemm_with_fp32_accumulation(rand):
    x, w = rand(0, (8, 64)), rand(1, (64, 16))
    want = lax.dot_general(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), DN_2D, preferred_element_type=jnp.float32)
    got = dot_general(x, w, DN_2D, "bf16")  # eagerly
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)  # up to summation order
    assert jnp.dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_identity_quantizers_give_the_plain_gradients_and_match_finite_differences(rand):
    recipe = Recipe(**{role: FP32_IDENTITY for role in ROLES})
    x, w = rand(0, (6, 10)), rand(1, (10, 4))
    g = rand(2, (6, 4))

    def loss(fn):
        return lambda a, b: jnp.sum(jnp.sin(fn(a, b)) * g)

    got = jax.jit(jax.grad(loss(lambda a, b: dot_general(a, b, DN_2D, recipe)), (0, 1)))(x, w)
    want = jax.jit(jax.grad(loss(jnp.dot), (0, 1)))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # central differences along a random direction, in fp32
    f = jax.jit(loss(lambda a, b: dot_general(a, b, DN_2D, recipe)))
    dx, dw = rand(3, x.shape), rand(4, w.shape)
    eps = 1e-3
    fd = (f(x + eps * dx, w + eps * dw) - f(x - eps * dx, w - eps * dw)) / (2 * eps)
    np.testing.assert_allclose(fd, jnp.sum(got[0] * dx) + jnp.sum(got[1] * dw), rtol=2e-3)


# Each role with an E2M1 "vector" quantizer: the GEMM binds it to its contraction, so the
# manual reference quantizes along that axis (x: (M, K), w: (K, N), g: (M, N)).
ROLE_CASES = {
    "fwd_act": ("x", 1), "fwd_weight": ("w", 0), "dgrad_grad": ("g", 1),
    "dgrad_weight": ("w", 1), "wgrad_grad": ("g", 0), "wgrad_act": ("x", 0),
}


@pytest.mark.parametrize("role", ROLE_CASES)
def test_each_role_quantizes_its_operand_along_its_contraction(role, rand):
    x, w, g = rand(0, (8, 32)), rand(1, (32, 16)), rand(2, (8, 16))
    recipe = Recipe(**{role: lp.Quantizer("e2m1fn", "token")})
    y, dx, dw = _value_and_vjp(lambda a, b: dot_general(a, b, DN_2D, recipe), x, w, g)
    tensor, axis = ROLE_CASES[role]
    q = jax.jit(lp.Quantizer("e2m1fn", f"axis({axis})"))
    xq, wq, gq = (q(v) if tensor == name else v for name, v in (("x", x), ("w", w), ("g", g)))
    want = {"fwd": xq @ wq, "dgrad": gq @ wq.T, "wgrad": xq.T @ gq}[role.split("_")[0]]
    got = {"fwd": y, "dgrad": dx, "wgrad": dw}[role.split("_")[0]]
    plain = {"fwd": x @ w, "dgrad": g @ w.T, "wgrad": x.T @ g}[role.split("_")[0]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, plain, rtol=1e-2, atol=1e-2)


def test_reuse_forward_uses_the_forward_operands_and_requantize_binds_anew(rand):
    x, w, g = rand(0, (8, 32)), rand(1, (32, 16)), rand(2, (8, 16))
    q = lp.Quantizer("e2m1fn", "channel")
    reuse = Recipe(fwd_act=q, fwd_weight=q, reuse_forward=True)
    requant = Recipe(fwd_act=q, fwd_weight=q, dgrad_weight=q, wgrad_act=q)
    _, dx_reuse, dw_reuse = _value_and_vjp(lambda a, b: dot_general(a, b, DN_2D, reuse), x, w, g)
    _, dx_requant, dw_requant = _value_and_vjp(lambda a, b: dot_general(a, b, DN_2D, requant), x, w, g)
    per_row, per_col = jax.jit(lp.Quantizer("e2m1fn", "axis(1)")), jax.jit(lp.Quantizer("e2m1fn", "axis(0)"))
    np.testing.assert_allclose(dx_reuse, g @ per_col(w).T, rtol=1e-5, atol=1e-5)  # forward W: scale per column
    np.testing.assert_allclose(dx_requant, g @ per_row(w).T, rtol=1e-5, atol=1e-5)  # along dgrad's contraction
    np.testing.assert_allclose(dw_reuse, per_row(x).T @ g, rtol=1e-5, atol=1e-5)  # forward X: scale per token
    np.testing.assert_allclose(dw_requant, per_col(x).T @ g, rtol=1e-5, atol=1e-5)
    assert not np.allclose(dx_reuse, dx_requant) and not np.allclose(dw_reuse, dw_requant)


def test_weight_gradient_follows_the_weight_quantizers_estimator(rand):
    x, w, g = rand(0, (8, 32)), rand(1, (32, 16)), rand(2, (8, 16))
    q = lp.Quantizer("e2m1fn", "channel", estimator="dge")
    recipe = Recipe(fwd_weight=q)
    _, _, dw = _value_and_vjp(lambda a, b: dot_general(a, b, DN_2D, recipe), x, w, g)
    want = jax.jit(jax.grad(lambda b: jnp.sum((x @ q(b)) * g)))(w)  # the Quantizer's own custom_vjp
    np.testing.assert_allclose(dw, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(dw, x.T @ g, rtol=1e-2)


def test_stochastic_rounding_keys_are_explicit_and_folded_per_role(rand):
    x, w = rand(0, (8, 32)), rand(1, (32, 16))
    sr = lp.Quantizer("e2m1fn", "tensor", rounding="stochastic")
    recipe = Recipe(fwd_act=sr, fwd_weight=sr)
    key = jax.random.key(7)
    f = jax.jit(lambda k: dot_general(x, w, DN_2D, recipe, k))
    y = f(key)
    np.testing.assert_array_equal(y, f(key))
    assert not np.array_equal(y, f(jax.random.key(8)))
    want = jax.jit(lambda k: sr(x, key=jax.random.fold_in(k, 0)) @ sr(w, key=jax.random.fold_in(k, 1)))(key)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="fwd_act, fwd_weight.*key="):
        dot_general(x, w, DN_2D, recipe)


def test_gradients_flow_through_jit_vmap_scan_and_remat(rand):
    x, ws, g = rand(0, (3, 8, 16)), 0.3 * rand(1, (3, 16, 16)), rand(2, (8, 16))

    def layer(h, w):
        return jnp.tanh(dot_general(h, w, DN_2D, recipes.fp8))

    def stacked(ws, h):
        return jnp.sum(jax.lax.scan(lambda c, w: (layer(c, w), None), h, ws)[0] * g)

    def unrolled(ws, h):
        for w in ws:
            h = layer(h, w)
        return jnp.sum(h * g)

    grad = jax.jit(jax.vmap(jax.grad(unrolled, (0, 1)), in_axes=(None, 0)))
    want_w, want_x = grad(ws, x)
    assert float(jnp.abs(want_w).max()) > 0
    for fn in (stacked, jax.checkpoint(stacked)):
        got_w, got_x = jax.jit(jax.vmap(jax.grad(fn, (0, 1)), in_axes=(None, 0)))(ws, x)
        np.testing.assert_allclose(got_w, want_w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_x, want_x, rtol=1e-5, atol=1e-6)


def test_out_dtype_and_preferred_element_type():
    x, w = jax.ShapeDtypeStruct((4, 8), jnp.bfloat16), jax.ShapeDtypeStruct((8, 2), jnp.bfloat16)

    def out_dtype(*args, **kwargs):
        return jax.eval_shape(lambda a, b: dot_general(a, b, DN_2D, *args, **kwargs), x, w).dtype

    assert out_dtype("fp8") == jnp.bfloat16
    assert out_dtype("fp8", preferred_element_type=jnp.float32) == jnp.float32
    assert out_dtype(recipes.fp8.replace(out_dtype="float32")) == jnp.float32
