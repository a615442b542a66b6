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

FIELD = ("fp8_rowwise", "fp8_deepseek", "mxfp8_te", "nvfp4_train", "mxfp4_tseng")
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


_E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float64)


def _tseng_reference(x):
    """Tseng et al.'s MXFP4 rule in float64 along the last axis, blocks of 32: the OCP scale
    2**(floor(log2 amax) - 2), the block times 3/4 / scale (in [-6, 6)), its two E2M1
    neighbours and the probability of the upper one; returns (scale, v, lo, hi, p_hi)."""
    x = np.asarray(x, np.float64)
    xb = x.reshape(x.shape[:-1] + (-1, 32))
    amax = np.abs(xb).max(-1, keepdims=True)
    scale = np.exp2(np.floor(np.log2(np.where(amax > 0, amax, 1))) - 2)
    v = 0.75 * xb / scale
    a = np.abs(v)
    i = np.clip(np.searchsorted(_E2M1, a, side="right") - 1, 0, len(_E2M1) - 2)
    lo, hi = _E2M1[i], _E2M1[i + 1]
    p = np.where(a >= 6, 0.0, (a - lo) / (hi - lo))
    return scale, v, np.sign(v) * lo, np.sign(v) * hi, p


def test_mxfp4_tseng_sr_never_clips_and_is_unbiased_in_float64(rand):
    """E[Q(x)] = x exactly: the block scaled by 3/4 stays within E2M1's 6, each value rounds
    up with probability (v - lo) / (hi - lo) (checked against float64, per entry, over 4000
    keys), and the 4/3 is undone on dequantization. OCP MXFP4 with the same stochastic
    rounding but no 3/4 clips the block maxima above 6 x scale and is biased there."""
    x = rand(11, (8, 64), df=2) * jnp.exp2(jnp.arange(-8, 8, 2.0))[:, None]
    q = bind(recipes_field.mxfp4_tseng.wgrad_grad, (1,))
    scale, v, lo, hi, p = _tseng_reference(x)
    assert np.abs(v).max() < 6 and np.abs(v).max() >= 3
    qt = q.quantize(x, key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(qt.scale).reshape(scale.shape), scale)
    assert float(qt.tensor_scale) == np.float32(4 / 3)
    n = 4000
    draw = jax.jit(jax.vmap(lambda k: q(x, key=k)))
    samples = np.asarray(draw(jax.random.split(jax.random.key(1), n)), np.float64).reshape((n,) + v.shape)
    unit = samples * 0.75 / scale  # back on the E2M1 grid (up to the f32 rounding of x 4/3)
    assert np.all(np.isclose(unit, lo, rtol=1e-6, atol=0) | np.isclose(unit, hi, rtol=1e-6, atol=0))
    frac = np.isclose(unit, hi, rtol=1e-6, atol=0).mean(0)
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(frac - p) <= 5.5 * se + 1e-12)
    exact = np.asarray(x, np.float64).reshape(v.shape)
    sd = np.sqrt(p * (1 - p)) * np.abs(hi - lo) * scale / 0.75  # the exact per-draw standard deviation
    # the mean within 5.5 standard errors of x itself (1e-6 relative: the f32 product lo x s x 4/3)
    assert np.all(np.abs(samples.mean(0) - exact) <= 5.5 * sd / np.sqrt(n) + 1e-6 * np.abs(exact))
    plain = bind(lp.Quantizer("e2m1fn", "block(32)", scale="pow2_floor", rounding="stochastic"), (1,))
    clipped = np.asarray(jax.jit(jax.vmap(lambda k: plain(x, key=k)))(jax.random.split(jax.random.key(1), 200)),
                         np.float64).reshape((200,) + v.shape)
    over = np.abs(exact / scale) > 6
    assert over.any() and np.all(np.abs(clipped[:, over]) < np.abs(exact[over]))


def test_mxfp4_tseng_forward_is_bf16_and_backward_is_rht64_then_mxfp4_sr(rand):
    """Forward: the bf16 product. Grad-input and grad-weight: both operands through the
    64-point RHT (signs first, from the GEMM's key fold), then each role's MXFP4 SR quantizer
    with its own key; the result times (4/3)**2 (the quantizers' constant tensor scale)."""
    x, w, g = rand(12, (64, 128)), rand(13, (128, 64)), rand(14, (64, 64), df=3)
    r = recipes_field.mxfp4_tseng
    key = jax.random.key(7)
    y, vjp = jax.vjp(lambda a, b: lp.dot_general(a, b, DN, r, key), x, w)
    bf = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64)  # noqa: E731
    _product_close(y, bf(x), bf(w))
    dx, dw = vjp(g)
    h = Hadamard(64, signs="key", signs_first=True)
    rk = lambda role: jax.random.fold_in(key, ROLES.index(role))  # noqa: E731
    hk = jax.random.fold_in(key, len(ROLES) + 1)
    qg = bind(r.dgrad_grad, (1,))(h.apply(g, 1, hk), key=rk("dgrad_grad"))
    qw = bind(r.dgrad_weight, (1,))(h.apply(w, 1, hk), key=rk("dgrad_weight"))
    _product_close(dx, qg, np.asarray(qw).T)
    hk = jax.random.fold_in(key, len(ROLES) + 2)
    qa = bind(r.wgrad_act, (0,))(h.apply(x, 0, hk), key=rk("wgrad_act"))
    qg = bind(r.wgrad_grad, (0,))(h.apply(g, 0, hk), key=rk("wgrad_grad"))
    _product_close(dw, np.asarray(qa).T, qg)
    u = np.asarray(h.apply(jnp.eye(64), 1, hk), np.float64)  # signs first: S @ H
    sv = np.asarray(h.sign_vector(hk), np.float64)
    np.testing.assert_allclose(u, sv[:, None] * lp.quant.hadamard.matrix(64), atol=1e-6)


def test_mxfp4_tseng_block_scales_and_grid_match_torchao_mx():
    """Against torchao's MX code (tests/fixtures/field_recipes_mxfp4.npz): the E8M0 block scale is
    torchao's FLOOR one, and the 3/4-scaled block rounded to nearest is torchao's E2M1 cast of
    y x 0.75 / scale; stochastic rounding lands on one of that value's two grid neighbours."""
    fix = np.load(pathlib.Path(__file__).parents[1] / "fixtures" / "field_recipes_mxfp4.npz")
    y = jnp.asarray(fix["y"])
    sr = bind(recipes_field.mxfp4_tseng.dgrad_grad, (1,))
    for q in (sr.replace(rounding="nearest_even"), sr):
        qt = q.quantize(y, key=jax.random.key(0))
        np.testing.assert_array_equal(np.asarray(qt.scale).reshape(16, 4), fix["mx_scale"])
    unit = np.asarray(sr.replace(rounding="nearest_even").quantize(y).codes, np.float64)
    decode = lambda c: np.asarray(sr.format.decode(jnp.asarray(c)), np.float64)  # noqa: E731
    np.testing.assert_array_equal(decode(unit).reshape(16, 128), fix["tseng_unit"])
    _, v, lo, hi, _ = _tseng_reference(fix["y"])
    got = decode(sr.quantize(y, key=jax.random.key(1)).codes).reshape(v.shape)
    assert np.all((got == lo) | (got == hi)) and not np.array_equal(got, fix["tseng_unit"].reshape(v.shape))
