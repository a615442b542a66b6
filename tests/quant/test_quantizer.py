"""The Quantizer: granularities, zero and non-finite inputs, scale sources, jit, grad, dtypes.

References are numpy (quant_reference.py): exact fp32 division, saturation, ml_dtypes rounding.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from quant_reference import FMAX, f32, fake_quant, run

import lowprec as lp
from lowprec.quant import Granularity, Quantizer, presets, update_amax_history

PRIMER = [-1.0, -0.87, -0.73, -0.6, -0.47, -0.33, -0.2, -0.07, 0.07, 0.2, 0.33, 0.47, 0.6, 0.73, 0.87, 1.0]


# ---------------------------------------------------------------- the primer's example
def test_primer_worked_example():
    q = Quantizer("lut4_primer")
    x = f32([0.27, 0.58, -0.75, 1.52])
    y, t, back, _ = run(q, x)
    np.testing.assert_array_equal(np.asarray(t.codes), [9, 10, 4, 15])
    want = f32(PRIMER)[[9, 10, 4, 15]] * np.float32(1.52)  # table value x absmax, in fp32
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(back, want)
    # The primer's decimals, up to the three fp32 roundings (table value, scale, product).
    np.testing.assert_allclose(want, [0.304, 0.5016, -0.7144, 1.52], rtol=3 * 2.0 ** -24, atol=0)
    assert t.nbytes() == 4 * 4 // 8 + 4  # 4-bit codes and one fp32 absmax


# ---------------------------------------------------------------- granularities
def _groups(spec, shape):
    """Index expressions of every scale group, written out per granularity."""
    if spec == "tensor":
        return [(...,)]
    if spec == "channel":  # (in, out) kernel: one scale per output column
        return [(slice(None), j) for j in range(shape[1])]
    if spec == "token":  # (batch, seq, dim): one scale per row
        return [(i, j, slice(None)) for i in range(shape[0]) for j in range(shape[1])]
    if spec == "block(32)":
        return [(i, slice(b, b + 32)) for i in range(shape[0]) for b in range(0, shape[1], 32)]
    if spec == "tile(16,16)":
        return [(slice(r, r + 16), slice(c, c + 16)) for r in range(0, shape[0], 16) for c in range(0, shape[1], 16)]
    raise AssertionError(spec)


GRANULARITIES = [("tensor", (5, 40)), ("channel", (24, 6)), ("token", (2, 3, 40)),
                 ("block(32)", (3, 70)), ("tile(16,16)", (40, 50))]


@pytest.mark.parametrize("spec,shape", GRANULARITIES, ids=str)
@pytest.mark.parametrize("name", ["e4m3fn", "e2m1fn", "int8"])
def test_granularity_scales_and_group_maxima(spec, shape, name):
    x = f32(np.random.default_rng(3).standard_t(4, shape))
    q = Quantizer(name, spec)
    y, t, back, values = run(q, x)
    groups = _groups(spec, shape)
    assert np.asarray(t.scale).size == len(groups) == q.granularity.num_groups(shape)
    s_all = np.empty_like(x)
    for g in groups:
        s_all[g] = np.abs(x[g]).max() / np.float32(FMAX[name])
    want = fake_quant(name, x, s_all)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(back, want)
    # Each group's largest element lands on format.max (its code decodes to the max).
    assert {np.abs(values[g]).max() for g in _code_groups(q, values.shape, shape)} == {FMAX[name]}


def _code_groups(q, code_shape, shape):
    """Groups in the codes' layout: x's own for tensor/axis, else the grouped (padded) one,
    where each group spans the reduced axes."""
    if q.granularity.kind in ("tensor", "axis"):
        return _groups(str(q.granularity), shape)
    _, axes = q.granularity.to_groups(jnp.zeros(shape))
    kept = [1 if d in axes else n for d, n in enumerate(code_shape)]
    return [tuple(slice(None) if d in axes else i for d, i in enumerate(idx)) for idx in np.ndindex(*kept)]


# ---------------------------------------------------------------- zeros, inf and NaN
ZERO_CASES = [Quantizer("e2m1fn", "block(32)", scale="pow2_floor"), Quantizer("e2m1fn", "block(32)", scale="pow2_ceil"),
              Quantizer("int8", "token", scale="pow2_nearest"), Quantizer("e4m3fn", "token"),
              presets.NVFP4, presets.MXFP8_E4M3]


@pytest.mark.parametrize("q", ZERO_CASES + [Quantizer("e4m3fn")], ids=str)
def test_all_zero_blocks_get_scale_one_and_quantize_to_zero(q):
    x = f32(np.random.default_rng(4).normal(size=(3, 64)))
    x[1] = 0  # zero blocks (and a zero token row)
    y, t, back, _ = run(q, x)
    if q in ZERO_CASES:  # groups inside a row (not one scale for the whole tensor)
        scales = np.asarray(t.scale).reshape(3, -1)
        assert np.all(scales[1] == 1)
        assert not y[1].any() and not back[1].any()
    zeros = np.zeros_like(x)
    y0, t0, back0, _ = run(q, zeros)
    assert not y0.any() and not back0.any()
    assert np.all(np.asarray(t0.scale) == 1)
    if t0.tensor_scale is not None:
        assert np.asarray(t0.tensor_scale) == 1


def test_nf4_zero_blocks_quantize_to_zero():
    x = f32(np.random.default_rng(5).normal(size=(4, 64)))
    x[2] = 0
    y, _, back, _ = run(presets.NF4, x)
    assert not y[2].any() and not back[2].any()
    assert not run(presets.NF4, np.zeros((2, 64), np.float32))[0].any()


def test_non_finite_inputs_never_set_the_scale():
    """scaling.py: amax is over finite values; NaN stays NaN; ±inf saturate to ±max * scale
    (overflow="saturate") or follow the format's specials (overflow="ieee"). (Codes of a
    format without NaN cannot hold NaN, so only e4m3fn and e5m2 dequantize it back.)"""
    x = f32([[1.0, -3.0, np.inf, np.nan, -np.inf, 0.5, 2.0, -1.0]])
    finite = np.isfinite(x)
    for name in ("e4m3fn", "e5m2", "e2m1fn"):
        s = np.float32(3.0) / np.float32(FMAX[name])
        want = fake_quant(name, np.where(finite, x, 0), s)
        y, t, back, _ = run(Quantizer(name), x)
        assert np.asarray(t.scale).item() == s
        np.testing.assert_array_equal(y[finite], want[finite])
        assert np.isnan(y[0, 3]) and (np.isnan(back[0, 3]) or not lp.formats.get(name).has_nan)
        np.testing.assert_array_equal(y[0, [2, 4]], [FMAX[name] * s, -FMAX[name] * s])
        y_ieee = run(Quantizer(name, overflow="ieee"), x)[0]
        np.testing.assert_array_equal(y_ieee[finite], want[finite])
        special = {"e4m3fn": [np.nan, np.nan], "e5m2": [np.inf, -np.inf], "e2m1fn": [FMAX[name] * s, -FMAX[name] * s]}
        np.testing.assert_array_equal(y_ieee[0, [2, 4]], special[name])
    only = f32([[np.inf, np.nan, -np.inf, np.nan]])  # no finite value: scale 1
    y, t, _, _ = run(Quantizer("e4m3fn"), only)
    assert np.asarray(t.scale).item() == 1
    np.testing.assert_array_equal(y, [[448, np.nan, -448, np.nan]])


# ---------------------------------------------------------------- scale sources
def test_delayed_scaling_uses_the_max_of_the_history():
    x = f32(np.random.default_rng(6).uniform(-3, 3, (4, 8)))
    x[0, 0] = 3.0  # current amax 3, below the history's max 5
    q = Quantizer("e4m3fn", source="delayed")
    history = jnp.asarray([1.0, 5.0, 2.0])
    y, t, back, _ = run(q, x, amax_history=history)
    s = np.float32(5.0) / np.float32(448)
    assert np.asarray(t.scale).item() == s
    np.testing.assert_array_equal(y, fake_quant("e4m3fn", x, s))
    np.testing.assert_array_equal(back, y)
    np.testing.assert_array_equal(np.asarray(update_amax_history(history, q.amax(x))), [3.0, 1.0, 5.0])
    with pytest.raises(ValueError, match="amax_history"):
        q(x)


def test_delayed_scaling_per_channel():
    x = f32(np.random.default_rng(7).uniform(-1, 1, (16, 3)))
    q = Quantizer("e4m3fn", "channel", source="delayed")
    history = jnp.asarray([[[0.5, 4.0, 0.1]], [[2.0, 1.0, 0.2]]])  # (length, 1, out)
    y = run(q, x, amax_history=history)[0]
    s = f32([2.0, 4.0, 0.2]) / np.float32(448)
    np.testing.assert_array_equal(y, fake_quant("e4m3fn", x, s[None, :]))
    np.testing.assert_array_equal(np.asarray(q.amax(x)), np.abs(x).max(axis=0, keepdims=True))


def test_fixed_scale():
    x = f32(np.random.default_rng(8).uniform(-200, 200, (5, 7)))
    q = Quantizer("e4m3fn", source="fixed", fixed_scale=0.25)
    y, t, back, _ = run(q, x)
    np.testing.assert_array_equal(y, fake_quant("e4m3fn", x, 0.25))  # 200 / 0.25 = 800 saturates
    np.testing.assert_array_equal(back, y)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="fixed_scale"):
            Quantizer("e4m3fn", source="fixed", fixed_scale=bad)


def test_two_level_scales_whose_divisor_overflows_fp32_are_refused():
    # E8M0 group scales under a tensor scale: 6 * 2**127 is inf in fp32, so every scale was 0 and
    # every output 0; the Quantizer now says so. NVFP4's 6 * 448 is fine.
    with pytest.raises(ValueError, match=r"tensor_scale=True: format max times scale max \(6 \* 1.70141e\+38\)"):
        Quantizer("e2m1fn", "block(4)", scale="e8m0fnu", tensor_scale=True)
    q = Quantizer("e2m1fn", "block(4)", scale="e4m3fn", tensor_scale=True)
    np.testing.assert_allclose(np.asarray(q(jnp.arange(8.0)))[-1], 7.0, rtol=1e-6)  # the block's amax survives


# ---------------------------------------------------------------- a value, under jit and grad
def test_quantizer_is_a_hashable_static_jit_argument():
    a = Quantizer("e2m1fn", "channel", scale="pow2_ceil")
    b = Quantizer(lp.formats.get("e2m1fn"), Granularity.parse("channel"), scale="pow2_ceil")
    assert a == b and hash(a) == hash(b) and len({a, b, presets.MXFP4, presets.NF4}) == 3
    traces = []

    def apply(x, q):
        traces.append(q)  # runs only when jit traces
        return q(x)

    apply = jax.jit(apply, static_argnums=1)
    x = jnp.ones((4, 3))
    apply(x, a)
    apply(x, b)  # equal quantizer: no retrace
    assert len(traces) == 1
    apply(x, a.replace(scale="pow2_floor"))
    assert len(traces) == 2


STE_CASES = [presets.MXFP4, presets.NVFP4, presets.NF4, presets.INT8_CHANNEL, Quantizer("e4m3fn", "token"),
             Quantizer("e2m1fn", source="fixed", fixed_scale=0.1)]


@pytest.mark.parametrize("q", STE_CASES, ids=str)
def test_ste_gradient_is_the_identity(q):
    x = jnp.asarray(np.random.default_rng(9).standard_t(2, (4, 64)), jnp.float32)  # heavy tails: saturation
    w = jnp.asarray(np.random.default_rng(10).normal(size=(4, 64)), jnp.float32)
    g = jax.jit(jax.grad(lambda x: jnp.sum(q(x) * w)))(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    gb = jax.jit(jax.grad(lambda x: jnp.sum(q(x).astype(jnp.float32) * w)))(x.astype(jnp.bfloat16))
    assert gb.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(gb), np.asarray(w.astype(jnp.bfloat16)))


@pytest.mark.parametrize("q", [presets.MXFP4, presets.NVFP4, presets.NF4, Quantizer("e4m3fn", "channel")], ids=str)
def test_bf16_in_bf16_out(q):
    x = jnp.asarray(np.random.default_rng(11).normal(size=(64, 64)), jnp.bfloat16)
    y, t, back, _ = run(q, x)
    assert y.dtype == back.dtype == ml_dtypes.bfloat16
    y32 = run(q, x.astype(jnp.float32))[0]  # bf16 -> fp32 is exact: same scales, then one cast
    np.testing.assert_array_equal(y, y32.astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(back, y)


def test_stochastic_quantizer_is_keyed_and_unbiased():
    q = Quantizer("e2m1fn", source="fixed", fixed_scale=1.0, rounding="stochastic")
    x = jnp.full((4096,), 2.3, jnp.float32)
    y1, t1, back1, _ = run(q, x, key=jax.random.key(0))
    y2 = run(q, x, key=jax.random.key(0))[0]
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(back1, y1)
    assert set(np.unique(y1)) == {2.0, 3.0}
    p = 0.3  # float32(2.3) = 2.3 to 1e-7
    assert abs((y1 == 3.0).mean() - p) <= 5 * np.sqrt(p * (1 - p) / x.size)


def test_elements_are_scaled_by_the_correctly_rounded_inverse():
    """amax 3136 -> s = 7. The scaled input is x * float32(1/7), not x / 7: 1.3671875 / 7 is the
    E4M3 tie 0.1953125 (-> 0.1875), while x * float32(1/7) lies just above it (-> 0.203125).
    The same value results eagerly and under jit."""
    x = f32([3136.0, 1.3671875, -0.68359375])
    inv = np.float32(1) / np.float32(7)
    assert np.float32(x[1] * inv) > 0.1953125 > np.float32(x[1] * inv) - 1e-7
    want = [3136.0, np.float32(0.203125 * 7), np.float32(-0.1015625 * 7)]
    np.testing.assert_array_equal(run(Quantizer("e4m3fn"), x)[0], want)
    np.testing.assert_array_equal(np.asarray(Quantizer("e4m3fn")(x)), want)
