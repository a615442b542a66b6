"""The one-pass block quantization kernel agrees bit for bit with the XLA path (Pallas interpreter on CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowprec as lp
from lowprec.quant import fused, presets


def _sample(shape, key=0):
    k1, k2 = jax.random.split(jax.random.key(key))
    blocks = shape[:-1] + (shape[-1] // 32, 1)
    scale = jnp.exp2(jnp.round(jax.random.normal(k2, blocks) * 10)).repeat(32, axis=-1).reshape(shape)
    return jax.random.normal(k1, shape) * scale  # blocks of very different magnitudes


@pytest.mark.parametrize("name", ["MXFP4", "MXFP6_E2M3", "MXFP8_E4M3", "MXFP8_E5M2", "MXINT8"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_equals_the_xla_path_bit_for_bit(name, dtype):
    q = getattr(presets, name)
    x = _sample((6, 5, 96)).astype(dtype)  # 30 rows of 3 blocks: tiles that are not powers of two
    x = x.at[0, 0, :32].set(0).at[1, 0, 3].set(jnp.inf).at[2, 1, 5].set(jnp.nan).at[3, 2, 7].set(-jnp.inf)
    x = x.at[4, 0, 40].set(jnp.finfo(dtype).max).at[4, 1, 70].set(jnp.finfo(dtype).tiny / 4)
    assert fused.fusable(q, x, platform="gpu") is None
    want, got = np.asarray(q(x)), np.asarray(fused.block_fake_quant(q, x, interpret=True))
    bits = f"u{want.itemsize}"
    assert want.dtype == got.dtype and np.array_equal(want.view(bits), got.view(bits))
    assert np.isnan(got).sum() == 1  # NaN stays NaN; inf saturates


def test_kernel_changes_values_like_the_format():
    x = _sample((4, 64))
    got = np.asarray(fused.block_fake_quant(presets.MXFP4, x, interpret=True))
    scales = np.exp2(np.floor(np.log2(np.abs(np.asarray(x)).reshape(8, 32).max(1))) - 2)  # OCP rule, emax(e2m1)=2
    grid = np.asarray(lp.formats.get("e2m1fn").values())
    scaled = got.reshape(8, 32) / scales[:, None]
    assert np.isin(scaled, grid).all() and not np.array_equal(got, np.asarray(x))


@pytest.mark.parametrize("q, shape, reason", [
    (presets.MXFP4, (4, 48), "last dimension"),                       # 48 is not a multiple of 32
    (presets.NVFP4, (4, 64), "tensor scale"),
    (presets.NF4, (4, 64), "scale fp32"),
    (presets.INT8_CHANNEL, (4, 64), "granularity"),
    (presets.MXFP4.replace(estimator="dge"), (4, 64), "estimator"),
    (presets.MXFP4.replace(granularity="block(32,axis=0)"), (64, 4), "granularity"),
])
def test_other_quantizers_take_the_xla_path(q, shape, reason):
    assert reason in fused.fusable(q, jnp.zeros(shape), platform="gpu")


def test_off_switch_and_cpu_default(monkeypatch):
    x = jnp.zeros((4, 64))
    assert fused.fusable(presets.MXFP4, x, platform="cpu") == "platform cpu"
    monkeypatch.setenv(fused.ENV, "0")
    assert fused.fusable(presets.MXFP4, x, platform="gpu") == "LOWPREC_FUSED_QUANT=0"


def test_quantizer_takes_the_kernel_where_fusable_with_the_ste_gradient(monkeypatch):
    kernel = fused.block_fake_quant
    calls = []
    monkeypatch.setattr(fused, "fusable", lambda q, x, platform=None: None)
    monkeypatch.setattr(fused, "block_fake_quant", lambda q, x: calls.append(q) or kernel(q, x, interpret=True))
    x, g = _sample((2, 64)), jax.random.normal(jax.random.key(3), (2, 64))
    y, vjp = jax.vjp(presets.MXFP4, x)
    assert calls and np.array_equal(np.asarray(y), np.asarray(kernel(presets.MXFP4, x, interpret=True)))
    assert np.array_equal(np.asarray(vjp(g)[0]), np.asarray(g))
