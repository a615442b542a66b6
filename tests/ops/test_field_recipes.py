"""The field's recipes (ops.recipes_field) against references that are not lowprec's: torchao's
quantization (tests/fixtures/field_recipes.npz, made by scripts/make_field_recipe_fixtures.py)
and, where no code was run, the papers' stated rules computed here with ml_dtypes."""

import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lowprec as lp
from lowprec.ops import ROLES, recipes, recipes_field
from lowprec.ops.operand import bind
from lowprec.quant.hadamard import Hadamard

FIELD = ("fp8_rowwise", "fp8_deepseek", "mxfp8_te", "nvfp4_train")
DN = (((1,), (0,)), ((), ()))
FIX = np.load(pathlib.Path(__file__).parents[1] / "fixtures" / "field_recipes.npz")


def _product_close(y, a, b):
    """``y`` equals ``a @ b`` up to f32 accumulation: per entry within 1e-5 of sum |a||b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_array_less(np.abs(np.asarray(y, np.float64) - a @ b), 1e-5 * (np.abs(a) @ np.abs(b)) + 1e-30)


def test_field_recipes_are_registered_and_print_as_one_line():
    for name in FIELD:
        r = recipes.get(name)
        assert r is getattr(recipes_field, name) and r.name == name and not r.reuse_forward
        assert "\n" not in str(r) and str(r).startswith(f"Recipe {name}:")


def test_fp8_rowwise_quantizes_each_gemm_operand_as_torchao_rowwise():
    x = jnp.asarray(FIX["x"])
    r = recipes_field.fp8_rowwise
    for role in ROLES:
        q = r.quantizer(role)
        np.testing.assert_array_equal(bind(q, (1,))(x), FIX["rowwise_dim-1"])
        np.testing.assert_array_equal(bind(q, (0,))(x), FIX["rowwise_dim0"])
    w, g = x.T, x[:, :32]  # the weight's contraction is x's rows; the gradient's tokens are x's
    y, vjp = jax.vjp(lambda a, b: lp.dot_general(a, b, DN, r), x, w)
    _product_close(y, FIX["rowwise_dim-1"], FIX["rowwise_dim-1"].T)
    _, dw = vjp(g)
    _product_close(dw, FIX["rowwise_dim0"].T, FIX["rowwise_dim0"][:, :32])


def test_mxfp8_te_rounds_scales_up_as_torchao_rceil_and_mxfp8_down_as_floor():
    x = jnp.asarray(FIX["x"])
    np.testing.assert_array_equal(bind(recipes_field.mxfp8_te.wgrad_grad, (1,))(x), FIX["mxfp8_rceil"])
    np.testing.assert_array_equal(bind(recipes.mxfp8.wgrad_grad, (1,))(x), FIX["mxfp8_floor"])
    np.testing.assert_array_equal(bind(recipes.mxfp4.fwd_act, (1,))(x), FIX["mxfp4_floor"])
    assert not np.array_equal(FIX["mxfp8_rceil"], FIX["mxfp8_floor"])
    y = lp.dot_general(x, x.T, DN, recipes_field.mxfp8_te)
    _product_close(y, FIX["mxfp8_rceil"], FIX["mxfp8_rceil"].T)


def test_nvfp4_train_activations_match_torchao_nvfp4():
    x = jnp.asarray(FIX["x_mild"])
    np.testing.assert_array_equal(bind(recipes_field.nvfp4_train.fwd_act, (1,))(x), FIX["nvfp4_mild"])
    # x spans 2**40: torchao clamps block scales below E4M3's normal range (2**-6) up to 2**-6,
    # lowprec (like Transformer Engine's E4M3 cast) keeps subnormal block scales; elsewhere equal
    x = FIX["x"]
    ts = np.abs(x).max() / (448 * 6)
    normal = np.repeat(np.abs(x).reshape(32, 16, 16).max(-1) / 6 / ts >= 2 ** -6, 16, axis=1)
    mine = np.asarray(bind(recipes_field.nvfp4_train.fwd_act, (1,))(jnp.asarray(x)))
    np.testing.assert_array_equal(mine[normal], FIX["nvfp4"][normal])
    assert 0 < normal.mean() < 1


def _e4m3(v):
    return v.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)


def test_fp8_deepseek_tiles_and_blocks_follow_the_papers_rule(rand):
    """DeepSeek-V3 (sec. 3.3): scale = amax / 448 per 1x128 tile of an activation or gradient
    along the contraction and per 128x128 block of a weight, fp32 scales, E4M3 values."""
    x = np.asarray(rand(0, (256, 384), df=3), np.float64)
    r = recipes_field.fp8_deepseek
    tiles = x.reshape(256, 3, 128)
    s = np.abs(tiles).max(-1, keepdims=True).astype(np.float32) / np.float32(448)
    want = (_e4m3(tiles / s) * s).reshape(256, 384)
    for role in ("fwd_act", "dgrad_grad", "wgrad_grad", "wgrad_act"):
        np.testing.assert_allclose(bind(r.quantizer(role), (1,))(jnp.asarray(x, jnp.float32)), want, rtol=1e-6)
    blocks = x.reshape(2, 128, 3, 128)
    s = np.abs(blocks).max((1, 3), keepdims=True).astype(np.float32) / np.float32(448)
    want = (_e4m3(blocks / s) * s).reshape(256, 384)
    for role, axis in (("fwd_weight", 0), ("dgrad_weight", 1)):
        np.testing.assert_allclose(bind(r.quantizer(role), (axis,))(jnp.asarray(x, jnp.float32)), want, rtol=1e-6)


@pytest.mark.parametrize("name", ["nvfp4_train", "fp8_deepseek"])
def test_two_d_weight_blocks_quantize_a_weight_and_its_transpose_identically(rand, name):
    w = rand(1, (256, 128), df=3)
    r = recipes.get(name)
    fwd, dgrad = bind(r.fwd_weight, (0,)), bind(r.dgrad_weight, (1,))
    np.testing.assert_array_equal(fwd(w).T, fwd(w.T))
    np.testing.assert_array_equal(fwd(w), dgrad(w))
    one_d = recipes_field.NVFP4_1D  # 1x16 blocks: the two GEMMs see different weights
    assert not np.array_equal(bind(one_d, (0,))(w), bind(one_d, (1,))(w))


def _z(samples, exact):
    """|mean - exact| in standard errors of the mean, per entry (entries that never vary: 0 or inf)."""
    err, se = np.abs(samples.mean(0) - exact), samples.std(0) / np.sqrt(len(samples))
    return np.where(se > 0, err / np.where(se > 0, se, 1), np.where(err > 0, np.inf, 0))


def test_stochastic_gradients_are_reproducible_from_the_key_and_unbiased(rand):
    """A stochastically rounded output gradient (E2M1 blocks of 16 with scales that never clip):
    E[Q_sr(g)] = g, so the mean of the grad-input GEMM over keys is g w^T."""
    x, w, g = rand(2, (16, 64)), rand(3, (64, 32)), rand(4, (16, 32), df=3)
    sr = lp.Quantizer("e2m1fn", "block(16)", scale="pow2_ceil", rounding="stochastic")
    r = lp.ops.Recipe(dgrad_grad=sr)

    def dx(key, recipe=r):
        return jax.vjp(lambda a: lp.dot_general(a, w, DN, recipe, key), x)[1](g)[0]

    k = jax.random.key(0)
    np.testing.assert_array_equal(dx(k), dx(k))
    assert not np.array_equal(dx(k), dx(jax.random.key(1)))
    n = 2000
    samples = np.asarray(jax.jit(jax.vmap(dx))(jax.random.split(jax.random.key(9), n)), np.float64)
    exact = np.asarray(g, np.float64) @ np.asarray(w, np.float64).T
    assert _z(samples, exact).max() < 5.5
    rtn = np.asarray(dx(k, r.replace(dgrad_grad=sr.replace(rounding="nearest_even"))), np.float64)
    assert (np.abs(rtn - exact) / (samples.std(0) / np.sqrt(n))).max() > 5.5  # nearest is biased beyond it


def test_nvfp4_sr_is_unbiased_except_where_its_e4m3_block_scale_clips(rand):
    """NVFP4's block scale amax/6 rounded to nearest E4M3 may round down: the block's largest
    entries then saturate at 6 x scale, deterministically. Every other entry is unbiased."""
    g = rand(5, (16, 32), df=3)
    q = bind(recipes_field.nvfp4_train.dgrad_grad, (1,))
    n = 2000
    samples = np.asarray(jax.jit(jax.vmap(lambda k: q(g, key=k)))(jax.random.split(jax.random.key(2), n)),
                         np.float64)
    z, g = _z(samples, np.asarray(g, np.float64)), np.asarray(g, np.float64)
    clipped = ~np.isfinite(z)
    assert z[~clipped].max() < 5.5
    sat = np.abs(samples[0][clipped])
    assert np.all(sat < np.abs(g[clipped])) and clipped.sum() < 0.05 * g.size
    assert np.array_equal(np.asarray(jax.jit(q)(g, jax.random.key(4))), np.asarray(jax.jit(q)(g, jax.random.key(4))))


def test_nvfp4_train_weight_gradient_is_rht_then_quantize_with_the_steps_key(rand):
    x, w, g = rand(5, (32, 64)), rand(6, (64, 48)), rand(7, (32, 48), df=3)
    r = recipes_field.nvfp4_train
    key = jax.random.key(3)
    dw = jax.vjp(lambda b: lp.dot_general(x, b, DN, r, key), w)[1](g)[0]
    h = Hadamard(16, signs="key")
    hk = jax.random.fold_in(key, len(ROLES) + 2)
    xt, gt = h.apply(x, 0, hk), h.apply(g, 0, hk)
    qa = bind(r.wgrad_act, (0,))(xt)
    qg = bind(r.wgrad_grad, (0,))(gt, key=jax.random.fold_in(key, ROLES.index("wgrad_grad")))
    _product_close(dw, np.asarray(qa).T, qg)
    with pytest.raises(ValueError, match="draws random bits in dgrad_grad, wgrad_grad, wgrad_hadamard"):
        lp.dot_general(x, w, DN, r)
