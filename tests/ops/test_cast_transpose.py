"""The cast-transpose kernel (both FP8 layouts of an operand in one pass) against ml_dtypes, and
``Recipe(fp8_transposes="pallas")`` against the XLA layouts: same bits, forward and backward.
On a CPU the kernel runs in the Pallas interpreter."""

import logging

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from flax import nnx

import lowprec as lp
from lowprec.models import llama
from lowprec.ops import cast_transpose, operand, recipes

FP8 = recipes.fp8.replace(native_fp8="on", fp8_transposes="fused")
PALLAS = FP8.replace(fp8_transposes="pallas")


@pytest.fixture(autouse=True)
def _log_again(monkeypatch):
    """The paths are logged once per process: forget what earlier tests logged."""
    monkeypatch.setattr(cast_transpose, "_logged", set())
    monkeypatch.setattr(operand, "_logged", set())


def _bits(a):
    return np.asarray(a).view(np.uint8)


@pytest.mark.parametrize("dtype, ref, fmax", [(jnp.float8_e4m3fn, ml_dtypes.float8_e4m3fn, 448.0),
                                              (jnp.float8_e5m2, ml_dtypes.float8_e5m2, 57344.0)])
def test_both_layouts_match_a_saturating_ml_dtypes_cast(dtype, ref, fmax):
    x = np.array(jax.random.normal(jax.random.key(0), (2, 64, 128), jnp.float32)) * 300
    x[0, 0, :4] = [np.nan, 1e9, -1e9, 3e-9]  # NaN stays NaN, overflow saturates, tiny values go subnormal
    inv = np.float32(2.0 ** -3)
    q, qt, amax = cast_transpose.cast_transpose(jnp.asarray(x), jnp.float32(inv), dtype, fmax, 2, amax=True)
    assert float(amax) == np.max(np.abs(x[np.isfinite(x)]))  # 1e9: the NaN is no magnitude
    want = np.clip(x.astype(np.float64) * inv, -fmax, fmax).astype(np.float32).astype(ref)
    assert q.shape == x.shape and q.dtype == dtype and qt.shape == (128, 128)
    nan = np.isnan(x)  # NaN stays NaN (E5M2 has several NaN codes: which one is not the format's business)
    assert np.isnan(np.asarray(q, np.float32))[nan].all()
    assert np.isnan(np.asarray(qt, np.float32).T.reshape(x.shape))[nan].all()
    np.testing.assert_array_equal(np.where(nan, 0, _bits(q)), np.where(nan, 0, want.view(np.uint8)))
    np.testing.assert_array_equal(np.where(nan.reshape(128, 128).T, 0, _bits(qt)),
                                  np.where(nan, 0, want.view(np.uint8)).reshape(128, 128).T)


def test_where_an_operand_splits_into_its_two_layouts():
    assert cast_transpose.split_of(3, (2,)) == 2       # activation (B, T, K) contracting K
    assert cast_transpose.split_of(2, (0,)) == 1       # weight (K, N) contracting K
    assert cast_transpose.split_of(3, (0, 1)) == 2     # weight (H, D, K) contracting H, D
    assert cast_transpose.split_of(3, (1,)) is None    # contracted axis in the middle
    assert cast_transpose.split_of(3, (2,), batch=(0,)) is None
    assert cast_transpose.split_of(2, (0, 1)) is None  # nothing left to be the other layout


def test_a_shape_that_is_not_whole_tiles_is_an_error():
    with pytest.raises(ValueError, match="the 96x64 view of \\[96, 64\\] is not a whole number of 64x64 tiles"):
        cast_transpose.cast_transpose(jnp.zeros((96, 64)), jnp.float32(1), jnp.float8_e4m3fn, 448.0, 1)


def _value_and_grads(fn, recipe, x, w, **kwargs):
    def loss(x, w):
        y = fn(x, w, recipe, **kwargs)
        return jnp.sum(y.astype(jnp.float32) * jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)


def _assert_same(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u, np.float32), np.asarray(v, np.float32))


@pytest.mark.parametrize("case", ["dense", "einsum"])
def test_pallas_layouts_give_the_same_bits_as_xla(case, caplog):
    k1, k2 = jax.random.split(jax.random.key(1))
    if case == "dense":  # activation split at 2, weight at 1, output gradient at 2
        x, w = jax.random.normal(k1, (2, 64, 128), jnp.bfloat16), jax.random.normal(k2, (128, 192), jnp.bfloat16)
        fn = lambda x, w, r: lp.dot_general(x, w, (((2,), (0,)), ((), ())), r)  # noqa: E731
        splits = {"[2, 64, 128] split at 2", "[128, 192] split at 1", "[2, 64, 192] split at 2"}
    else:  # an output projection: heads and head dims contracted, the weight split at 2
        x, w = jax.random.normal(k1, (64, 2, 64), jnp.bfloat16), jax.random.normal(k2, (2, 64, 128), jnp.bfloat16)
        fn = lambda x, w, r: lp.ops.einsum("tnh,nhd->td", x, w, r)  # noqa: E731
        splits = {"[64, 2, 64] split at 1", "[2, 64, 128] split at 2", "[64, 128] split at 1"}
    with caplog.at_level(logging.INFO, logger="lowprec.ops.cast_transpose"):
        got = _value_and_grads(fn, PALLAS, x, w)
    _assert_same(_value_and_grads(fn, FP8, x, w), got)
    assert all(any(s in m for m in caplog.messages) for s in splits), caplog.messages


def test_delayed_scaling_and_odd_shapes_fall_back_with_a_message(caplog):
    """A delayed output gradient has two histories (not shared); a 96-row activation is not
    whole tiles: those operands are laid out by XLA, logged; the bits stay those of fp8."""
    x = jax.random.normal(jax.random.key(2), (96, 128), jnp.bfloat16)
    w = jax.random.normal(jax.random.key(3), (128, 64), jnp.bfloat16)
    fn = lambda x, w, r, **kw: lp.dot_general(x, w, (((1,), (0,)), ((), ())), r, **kw)  # noqa: E731
    delayed = recipes.fp8_delayed.replace(native_fp8="on")
    hist = lp.ops.init_amax_history(delayed).at[:, 0].set(4.0)
    with caplog.at_level(logging.INFO, logger="lowprec.ops"):
        got = _value_and_grads(fn, delayed.replace(fp8_transposes="pallas"), x, w, amax_history=hist)
    _assert_same(_value_and_grads(fn, delayed, x, w, amax_history=hist), got)

    def updated(recipe):  # the weight's amax comes from the kernel's pass, the others from reductions
        return jax.jit(jax.grad(lambda h: jnp.sum(fn(x, w, recipe, amax_history=h).astype(jnp.float32))))(hist)
    new = updated(delayed.replace(fp8_transposes="pallas"))
    np.testing.assert_array_equal(new, updated(delayed))
    assert float(new[lp.ops.ROLES.index("fwd_weight"), 0]) == float(jnp.max(jnp.abs(w)))
    assert any("[96, 128]: both layouts from XLA" in m and "64x64 tiles" in m for m in caplog.messages)
    assert any("[128, 64] split at 1" in m for m in caplog.messages)  # the weight still gets the kernel
    assert not any("[96, 64] split" in m for m in caplog.messages)  # the gradient is quantized per role


def test_fp8_pallas_is_a_named_recipe():
    assert lp.recipes.get("fp8_pallas").fp8_transposes == "pallas"
    assert "fp8_transposes=pallas" in str(lp.recipes.get("fp8_pallas"))


def test_a_stacked_model_trains_to_the_same_bits(caplog):
    """The tiny LLaMA (layers through nnx.scan) under fp8_pallas: loss and every gradient equal
    fp8's; the 64-wide projections take the kernel, the 32-wide K/V projections fall back.

    Compiled without XLA's excess precision: by default XLA may fuse an elementwise producer
    (the MLP's silu(gate) * up) into the quantization that reads it and round its f32 value
    to FP8 without rounding it to bf16 first, while the kernel reads the bf16 tensor the
    program names; then the two differ in a few values (the down projection's input)."""
    def loss_and_grads(recipe):
        model = llama.Llama(llama.config_for("tiny"), nnx.Rngs(0))
        lp.nn.assign_recipes(model, [("lm_head", "bf16"), (".*", recipe)])
        tokens = jax.random.randint(jax.random.key(1), (2, 33), 0, 256)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p):
            m = nnx.merge(graphdef, p, rest)
            return jnp.mean(llama.cross_entropy(m(tokens[:, :-1]), tokens[:, 1:]))
        step = jax.jit(jax.value_and_grad(loss)).lower(params)
        return step.compile(compiler_options={"xla_allow_excess_precision": False})(params)

    with caplog.at_level(logging.INFO, logger="lowprec.ops"):
        got = loss_and_grads(PALLAS)
    _assert_same(loss_and_grads(FP8), got)
    assert any("[2, 32, 64] split at 2" in m for m in caplog.messages)  # a block's input activation
    assert any("[2, 32, 32]: both layouts from XLA" in m for m in caplog.messages)  # a K/V output gradient


def test_auto_runs_the_kernel_only_on_a_single_gpu():
    assert cast_transpose.auto_transposes("gpu", 1) == ("pallas", "one GPU")
    chosen, why = cast_transpose.auto_transposes("gpu", 8)
    assert chosen == "fused" and "8 devices" in why
    chosen, why = cast_transpose.auto_transposes("cpu", 1)
    assert chosen == "fused" and "backend cpu" in why
    assert recipes.fp8.fp8_transposes == "auto" and lp.ops.Recipe().fp8_transposes == "auto"
    assert "fp8_transposes" not in str(recipes.fp8)


def test_auto_here_is_the_xla_program_and_says_so(rand, caplog):
    """On this CPU process (not one GPU) "auto" lowers to exactly the "fused" program, logged."""
    x, w = rand(0, (128, 64), jnp.bfloat16), rand(1, (64, 128), jnp.bfloat16)

    def lowered(recipe):
        fn = jax.jit(jax.grad(lambda a, b: jnp.sum(lp.ops.dot_general(a, b, (((1,), (0,)), ((), ())), recipe))))
        return fn.lower(x, w).as_text()

    with caplog.at_level(logging.INFO, logger="lowprec.ops.cast_transpose"):
        auto = lowered(FP8.replace(fp8_transposes="auto"))
    assert auto == lowered(FP8) and "pallas" not in auto.lower()
    assert "fp8_transposes=auto: fused (backend cpu" in caplog.text


def test_auto_on_one_gpu_is_the_fp8_pallas_program(rand, monkeypatch):
    """Where "auto" picks the kernel (one GPU), the program is exactly recipe fp8_pallas's
    (here in the Pallas interpreter: the choice is forced, the backend stays the CPU)."""
    monkeypatch.setattr(cast_transpose, "auto_transposes", lambda: ("pallas", "one GPU"))
    x, w = rand(0, (128, 64), jnp.bfloat16), rand(1, (64, 128), jnp.bfloat16)

    def lowered(recipe):
        fn = jax.jit(jax.grad(lambda a, b: jnp.sum(lp.ops.dot_general(a, b, (((1,), (0,)), ((), ())), recipe)),
                              argnums=(0, 1)))
        return fn.lower(x, w).as_text()

    auto = lowered(recipes.fp8.replace(native_fp8="on"))
    assert auto == lowered(recipes.fp8_pallas.replace(native_fp8="on"))
    assert auto != lowered(recipes.fp8.replace(native_fp8="on", fp8_transposes="fused"))


def test_pallas_layouts_stay_finite_at_a_scale_below_fp32s_normal_range():
    """An operand whose per-tensor E4M3 scale amax/448 is below 2**-128 (1/s overflows fp32):
    the kernel's inverse is capped, so zeros stay zero and nothing is NaN, forward and backward."""
    k1, k2 = jax.random.split(jax.random.key(3))
    x = jax.random.normal(k1, (2, 64, 128), jnp.float32) * 2.0 ** -122
    x = jnp.where(jnp.arange(128) % 3 == 0, 0.0, x).astype(jnp.float32)  # exact zeros in every row
    w = jax.random.normal(k2, (128, 192), jnp.bfloat16)
    fn = lambda x, w, r: lp.dot_general(x, w, (((2,), (0,)), ((), ())), r)  # noqa: E731
    value, grads = _value_and_grads(fn, PALLAS, x, w)
    assert np.isfinite(np.asarray(value)) and all(np.isfinite(np.asarray(g, np.float32)).all() for g in grads)
