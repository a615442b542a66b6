"""The published presets: OCP MX scales, NVFP4's two-level scales, NF4's double quantization.

References are numpy (quant_reference.py) with the scales worked out by hand from REFERENCE.md §2.
"""

import ml_dtypes
import numpy as np
import pytest
from quant_reference import FMAX, block_amax, f32, fake_quant, per_block, run

import lowprec as lp
from lowprec.quant import Granularity, presets

NF4 = np.float32(lp.formats.NF4_VALUES)


# ---------------------------------------------------------------- MX (OCP v1.0)
# preset -> (element format, emax_elem from the OCP table, block B's amax, its scale by hand).
# Block A has amax 0.3: floor(log2 0.3) = -2, so its scale is 2**(-2 - emax_elem).
MX = {
    "mxfp4": ("e2m1fn", 2, 7.5, 1.0),      # floor(log2 7.5) = 2: scale 1, 7.5 clips to 6
    "mxfp8_e4m3": ("e4m3fn", 8, 500.0, 1.0),  # floor(log2 500) = 8: scale 1, clips to 448
    "mxfp8_e5m2": ("e5m2", 15, 65000.0, 1.0),  # floor(log2 65000) = 15: clips to 57344
    "mxfp6_e3m2": ("e3m2fn", 4, 31.0, 1.0),   # floor(log2 31) = 4: clips to 28
    "mxfp6_e2m3": ("e2m3fn", 2, 7.9, 1.0),    # floor(log2 7.9) = 2: clips to 7.5
    "mxint8": ("mxint8", 0, 3.0, 2.0),       # floor(log2 3) = 1, emax 0: scale 2, 1.5 fits
}


def _mx_input(b_amax):
    rng = np.random.default_rng(0)
    pattern = rng.uniform(-1, 1, (2, 32)).astype(np.float32)
    pattern[:, 5] = [1.0, -1.0]  # the block maxima, exactly
    return f32(np.concatenate([pattern[0] * np.float32(0.3), pattern[1] * np.float32(b_amax)])[None, :])


@pytest.mark.parametrize("preset", MX)
def test_mx_scales_follow_the_ocp_floor_rule(preset):
    name, emax_elem, b_amax, b_scale = MX[preset]
    q = presets.get(preset)
    assert q.format.emax == emax_elem and q.granularity == Granularity.parse("block(32)")
    x = _mx_input(b_amax)
    y, t, back, _ = run(q, x)
    scales = np.asarray(t.scale).ravel()
    np.testing.assert_array_equal(scales, [2.0 ** (-2 - emax_elem), b_scale])
    np.testing.assert_array_equal(y, fake_quant(name, x, per_block(scales, 32, 64)))
    np.testing.assert_array_equal(back, y)
    clipped = b_amax / b_scale > FMAX[name]
    assert clipped == (preset != "mxint8")
    if clipped:  # the floor rule clips block B's max to format.max * scale
        assert np.abs(y[0, 32:]).max() == FMAX[name] * b_scale < b_amax


def test_mxfp4_block_by_hand():
    """Block amax 0.3 -> scale 2**-4: 0.3/s = 4.8 -> 4, -0.1/s = -1.6 -> -1.5, 0.05/s = 0.8 -> 1."""
    x = np.zeros((1, 32), np.float32)
    x[0, :3] = [0.3, -0.1, 0.05]
    np.testing.assert_array_equal(run(presets.MXFP4, x)[0][0, :3], [0.25, -0.09375, 0.0625])


@pytest.mark.parametrize("preset", MX)
def test_pow2_ceil_never_clips(preset):
    name, emax_elem, b_amax, _ = MX[preset]
    q = presets.get(preset).replace(scale="pow2_ceil")
    x = _mx_input(b_amax)
    y, t, back, _ = run(q, x)
    scales = np.asarray(t.scale).ravel()
    # the smallest power of two s with amax / s <= max, by hand from the block maxima
    a = block_amax(x, 32).ravel().astype(np.float64)
    want = 2.0 ** np.ceil(np.log2(a / FMAX[name]))
    np.testing.assert_array_equal(scales, want)
    assert np.all(np.abs(x) / per_block(scales, 32, 64) <= FMAX[name])
    np.testing.assert_array_equal(y, fake_quant(name, x, per_block(scales, 32, 64)))


# ---------------------------------------------------------------- NVFP4
def _nvfp4_reference(x):
    am = block_amax(x, 16).reshape(x.shape[0], -1)
    ts = np.float32(am.max()) / np.float32(6 * 448)
    r = np.minimum(am / ts / np.float32(6), np.float32(448))
    g = r.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    g = np.where(am == 0, np.float32(1), np.where(g > 0, g, np.float32(2.0 ** -9)))
    return g, ts


def test_nvfp4_two_level_scales_round_trip():
    x = f32(np.random.default_rng(1).standard_t(3, (4, 80)) * 5)
    x[2, 16:32] = 0  # an all-zero block
    x[3, :16] *= 1e-4  # a block far below the tensor's max
    q = presets.NVFP4
    y, t, back, _ = run(q, x)
    g_ref, ts_ref = _nvfp4_reference(x)
    assert np.asarray(t.tensor_scale).dtype == np.float32 and np.asarray(t.tensor_scale) == ts_ref
    g = np.asarray(t.scale).reshape(4, 5)
    np.testing.assert_array_equal(g, g_ref)
    np.testing.assert_array_equal(g.astype(ml_dtypes.float8_e4m3fn).astype(np.float32), g)  # on E4M3's grid
    assert g[2, 1] == 1
    s = f32(per_block(g_ref, 16, 80) * ts_ref)
    np.testing.assert_array_equal(y, fake_quant("e2m1fn", x, s))
    np.testing.assert_array_equal(back, y)
    assert not y[2, 16:32].any()
    assert t.nbytes() == 4 * 80 // 2 + 4 * 5 + 4  # 4-bit codes, one byte per block, fp32 tensor scale


# ---------------------------------------------------------------- NF4 with double quantization
def test_nf4_double_quantization_round_trips():
    x = f32(np.random.default_rng(2).normal(size=(256, 256)) * np.float32(0.02))
    q = presets.NF4
    y, t, back, _ = run(q, x)
    c = block_amax(x, 64).ravel()  # 1024 fp32 absmax values, one per block of 64
    mean = np.asarray(t.scale_mean)
    np.testing.assert_allclose(mean, c.astype(np.float64).mean(), rtol=1e-6)  # fp32 summation order
    d = f32(c - mean).reshape(4, 256)  # int8 blocks of 256 over the centred absmax values
    s2 = f32(np.abs(d).max(axis=1, keepdims=True) / np.float32(127))
    k = np.clip(np.round(d / s2), -127, 127)
    np.testing.assert_array_equal(np.asarray(t.scale_q.codes).reshape(4, 256).view(np.int8), k)
    np.testing.assert_array_equal(np.asarray(t.scale_q.scale).reshape(4, 1), s2)
    # The scale is rebuilt as k * s2 + mean: rounded twice, or once where XLA fuses the
    # multiply-add (FMA) under jit. Each block's scale is one of the two, and the output is
    # the nearest NF4 value times that same scale.
    c_sep = f32(f32(k * s2) + mean).ravel()
    c_fma = f32(k.astype(np.float64) * s2 + np.float64(mean)).ravel()
    for c_hat in (c_sep, c_fma):
        xs = f32(x.reshape(-1, 64) / c_hat[:, None]).astype(np.float64)
        idx = np.abs(xs[..., None] - NF4.astype(np.float64)).argmin(axis=-1)  # no exact ties here
        np.testing.assert_array_equal(np.asarray(t.codes).reshape(-1, 64), idx)
    y_blocks = y.reshape(-1, 64)
    by_sep = np.all(y_blocks == f32(NF4[idx] * c_sep[:, None]), axis=1)
    by_fma = np.all(y_blocks == f32(NF4[idx] * c_fma[:, None]), axis=1)
    assert np.all(by_sep | by_fma)
    np.testing.assert_array_equal(back, y)
    np.testing.assert_array_equal(np.asarray(t.group_scales()).ravel(), c_sep)  # eager: no FMA
    # QLoRA's storage: 4 bits per weight + 8 bits per 64 + 32 bits per 64 * 256 + one fp32 mean.
    assert t.nbytes() == x.size // 2 + x.size // 64 + 4 * x.size // (64 * 256) + 4
    assert t.nbytes() * 8 / x.size == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-3)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_dequantizes_to_its_fake_quantization(name):
    q = presets.PRESETS[name]
    x = f32(np.random.default_rng(12).standard_t(3, (48, 70)))
    y, t, back, _ = run(q, x)
    assert y.shape == back.shape == x.shape
    np.testing.assert_array_equal(back, y)
    assert np.all(np.isfinite(y))
