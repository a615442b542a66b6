"""Block Hadamard transforms (quant.hadamard) and the GEMMs that transform both operands."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowprec as lp
from lowprec.ops import Recipe
from lowprec.quant import Quantizer
from lowprec.quant.hadamard import SIZES, Hadamard, matrix, transform

DN = (((1,), (0,)), ((), ()))


@pytest.mark.parametrize("size", SIZES)
def test_matrix_is_orthogonal_with_entries_one_over_sqrt_size(size):
    h = matrix(size)
    np.testing.assert_allclose(h @ h.T, np.eye(size), atol=1e-15)
    np.testing.assert_array_equal(np.abs(h) * np.sqrt(size), np.ones((size, size)))
    assert np.all(h[0] > 0) and np.all(h[:, 0] > 0)  # Sylvester order, as Transformer Engine's 16x16 H


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("signs", ["none", "seed"])
def test_transform_preserves_norms_and_its_inverse_is_exact_in_float64(size, signs):
    h = Hadamard(size, signs=signs, seed=3)
    x = np.random.default_rng(size).standard_normal((3, 2 * size, 5))
    with jax.enable_x64(True):
        y = h.apply(jnp.asarray(x), axis=1)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-14)
        back = np.asarray(h.invert(y, axis=1))
    np.testing.assert_allclose(back, x, rtol=0, atol=4e-15)
    if size in (16, 64):  # 1/sqrt(size) is a power of two: small integers go there and back exactly
        xi = np.random.default_rng(0).integers(-8, 9, (4, size)).astype(np.float64)
        with jax.enable_x64(True):
            np.testing.assert_array_equal(np.asarray(h.invert(h.apply(jnp.asarray(xi), 1), 1)), xi)


def test_signs_flip_each_block_output_and_change_with_the_key():
    h = Hadamard(16, signs="key")
    s1, s2 = h.sign_vector(jax.random.key(0)), h.sign_vector(jax.random.key(1))
    assert set(np.unique(np.asarray(s1))) <= {-1.0, 1.0} and not np.array_equal(s1, s2)
    x = np.random.default_rng(1).standard_normal((2, 32)).astype(np.float32)
    plain = np.asarray(transform(x, -1, 16)).reshape(2, 2, 16)
    signed = np.asarray(h.apply(x, -1, jax.random.key(0))).reshape(2, 2, 16)
    np.testing.assert_allclose(signed, plain * np.asarray(s1), rtol=1e-6)
    np.testing.assert_array_equal(Hadamard(16, "seed", 5).sign_vector(), Hadamard(16, "seed", 5).sign_vector())
    with pytest.raises(ValueError, match="need key="):
        h.sign_vector()


@pytest.mark.parametrize("size", SIZES)
def test_transformed_product_equals_the_product(size):
    rng = np.random.default_rng(size)
    x, w = rng.standard_normal((8, 256)).astype(np.float32), rng.standard_normal((256, 12)).astype(np.float32)
    h = Hadamard(size, signs="key")
    k = jax.random.key(7)
    y = np.asarray(h.apply(x, 1, k)) @ np.asarray(h.apply(w, 0, k))
    np.testing.assert_allclose(y, x.astype(np.float64) @ w, rtol=0, atol=2e-4 * np.sqrt(256))


def test_errors_name_the_field_and_allowed_values():
    with pytest.raises(ValueError, match="Hadamard.size must be one of 16, 32, 64, 128; got 8"):
        Hadamard(8)
    with pytest.raises(ValueError, match="unknown Hadamard.signs 'rand'; known: none, key, seed"):
        Hadamard(16, signs="rand")
    with pytest.raises(ValueError, match="not a multiple of 16"):
        transform(np.ones((3, 24)), 1, 16)
    with pytest.raises(ValueError, match="fwd_hadamard needs reuse_forward=False"):
        Recipe(fwd_act=Quantizer("e4m3fn"), fwd_hadamard=Hadamard(), reuse_forward=True)
    with pytest.raises(ValueError, match="fwd_act: OCC cannot follow fwd_hadamard"):
        Recipe(fwd_act=Quantizer("e2m1fn", occ=lp.quant.OCC(alpha=0.99)), fwd_hadamard=Hadamard())
    with pytest.raises(TypeError, match="wgrad_hadamard must be a lowprec.quant.Hadamard"):
        Recipe(wgrad_hadamard=16)


def _all_three(h):
    return Recipe(fwd_hadamard=h, dgrad_hadamard=h, wgrad_hadamard=h)


def test_unquantized_transformed_gemms_give_the_plain_gradients(rand):
    x, w, g = rand(0, (2, 32, 32)), rand(1, (32, 32)), rand(2, (2, 32, 32))  # grad-weight: along the 32 tokens
    dn = (((2,), (0,)), ((), ()))
    for h in (Hadamard(16, "key"), Hadamard(32, "seed", 1)):
        r = _all_three(h)
        key = jax.random.key(3)
        y, vjp = jax.vjp(lambda a, b: lp.dot_general(a, b, dn, r, key), x, w)
        y0, vjp0 = jax.vjp(lambda a, b: lp.dot_general(a, b, dn, "none"), x, w)
        np.testing.assert_allclose(y, y0, atol=1e-5)
        for got, want in zip(vjp(g), vjp0(g)):
            np.testing.assert_allclose(got, want, atol=1e-4)
    assert r.needs_key() == ()
    assert _all_three(Hadamard(16, "key")).needs_key() == ("fwd_hadamard", "dgrad_hadamard", "wgrad_hadamard")
    with pytest.raises(ValueError, match="draws random bits in fwd_hadamard"):
        lp.dot_general(x, w, dn, _all_three(Hadamard(16, "key")))


def test_token_count_not_a_multiple_of_the_block_is_an_error_in_the_weight_gradient(rand):
    x, w = rand(0, (24, 32)), rand(1, (32, 16))
    r = Recipe(wgrad_hadamard=Hadamard(16))
    with pytest.raises(ValueError, match="length 24 is not a multiple of 16"):
        jax.grad(lambda a: lp.dot_general(a, w, DN, r).sum())(x)


def test_rht_lowers_the_error_of_a_4_bit_gemm_on_heavy_tailed_inputs(rand):
    """MXFP4-style E2M1 blocks of 32 with power-of-two scales: outliers of Student-t (df=2)
    operands crush their block's other values; RHT spreads them first. (On such i.i.d. data
    NVFP4's blocks of 16 with E4M3 scales gain nothing from it: see docs/reference/recipes_field.md.)"""
    q = Quantizer("e2m1fn", "block(32)", scale="pow2_floor")
    plain = Recipe(fwd_act=q, fwd_weight=q)
    rht = plain.replace(fwd_hadamard=Hadamard(32, "seed", 0))
    for seed in range(3):
        x, w = rand(2 * seed, (64, 512), df=2), rand(2 * seed + 1, (512, 64), df=2)
        exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
        err = {name: np.linalg.norm(np.asarray(lp.dot_general(x, w, DN, r)) - exact) / np.linalg.norm(exact)
               for name, r in (("plain", plain), ("rht", rht))}
        assert err["rht"] < err["plain"], (seed, err)
