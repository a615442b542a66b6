"""The one-pass MX kernel (lowprec.quant.block_kernel) against the library's XLA path, bit for
bit, in the Pallas interpreter: ties at every midpoint, saturation, inf, NaN, -0, all-zero
blocks, blocks whose amax is subnormal, and formats other than E2M1; and how a Quantizer
chooses between them (``kernel``)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowprec as lp
from lowprec.quant import block_kernel, quantizer


def _adversarial(fmt_name: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 64)).astype(np.float32) * np.float32(2.0) ** rng.integers(-20, 20, (512, 1))
    pos = np.unique(np.abs(np.asarray(lp.formats.get(fmt_name).values(), np.float64)))
    mids = (pos[:-1] + pos[1:]) / 2
    # blocks whose amax is the format's max at scale 1 (8 * 2**-emax... simplest: amax = max): ties land on midpoints
    x[:64, :32] = rng.choice(np.concatenate([mids, -mids, pos, -pos]), (64, 32)).astype(np.float32)
    x[:64, 0] = pos[-1]
    x[64, :32] = 0.0
    x[65, :32] = -0.0
    x[66, :32] = rng.standard_normal(32) * 1e-40  # subnormal amax: the scale clips to 2**-127
    x[67, 3], x[68, 5], x[69, 7] = np.inf, -np.inf, np.nan
    x[70, :32] = np.nan
    x[71, 0] = 3e38
    return x


@pytest.mark.parametrize("fmt", ["e2m1fn", "e1m2", "e3m0", "int4"])
def test_matches_the_xla_path_bit_for_bit(fmt):
    q = lp.Quantizer(fmt, "block(32)", scale="pow2_floor")
    x = jnp.asarray(_adversarial(fmt))
    assert block_kernel.supported(q, x) is None
    got, want = np.asarray(block_kernel.block_fake_quant(q, x)), np.asarray(jax.jit(q)(x))
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(np.where(nan, 0, got).view(np.uint32), np.where(nan, 0, want).view(np.uint32))


def test_unsupported_quantizers_say_why():
    x = jnp.zeros((256, 32))
    assert "pow2_floor" in block_kernel.supported(lp.quant.presets.NVFP4, x)
    assert "more than 16 values" in block_kernel.supported(lp.Quantizer("e4m3fn", "block(32)", scale="pow2_floor"), x)
    assert "multiple of 8" in block_kernel.supported(lp.quant.presets.MXFP4, jnp.zeros((4, 32)))
    assert "whole blocks of 32" in block_kernel.supported(lp.quant.presets.MXFP4, jnp.zeros((8, 48)))
    with pytest.raises(ValueError, match="block_fake_quant: granularity"):
        block_kernel.block_fake_quant(lp.Quantizer("e2m1fn", "channel"), x)


def test_tiles_are_the_largest_power_of_two_of_blocks_that_divides():
    assert [block_kernel._rows(n) for n in (1024, 768, 24, 8, 4, 12)] == [256, 256, 8, 8, 0, 0]
    q = lp.quant.presets.MXFP4
    x = jnp.asarray(_adversarial("e2m1fn")[:24, :32])  # 24 blocks: tiles of 8
    np.testing.assert_array_equal(np.asarray(block_kernel.block_fake_quant(q, x)).view(np.uint32),
                                  np.asarray(jax.jit(q)(x)).view(np.uint32))


@pytest.fixture
def _log_again(monkeypatch):
    monkeypatch.setattr(quantizer, "_logged", set())


@pytest.mark.parametrize("estimator", ["ste", "dge"])
def test_quantizer_kernels_give_the_same_value_and_gradient(estimator, caplog, _log_again):
    x = jnp.asarray(_adversarial("e2m1fn")[64:320])  # finite values only: gradients compare exactly
    x = jnp.where(jnp.isfinite(x), x, 1.0).astype(jnp.bfloat16)
    g = jax.random.normal(jax.random.key(3), x.shape, jnp.bfloat16)
    out = {}
    with caplog.at_level(logging.INFO, logger="lowprec.quant.quantizer"):
        for kernel in ("pallas", "xla"):
            q = lp.quant.presets.MXFP4.replace(kernel=kernel, estimator=estimator)
            y, vjp = jax.vjp(jax.jit(q), x)
            out[kernel] = (y, vjp(g)[0])
    for a, b in zip(out["pallas"], out["xla"], strict=True):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16))
    assert f"kernel=pallas) on bfloat16[256, 64]: Pallas block kernel (kernel='pallas')" in caplog.text
    assert "kernel=xla) on bfloat16[256, 64]: XLA (kernel='xla')" in caplog.text


def test_auto_takes_the_kernel_only_where_it_applies_on_a_gpu(caplog, _log_again):
    x = jnp.ones((256, 64))
    q = lp.quant.presets.MXFP4
    assert q.kernel == "auto" and "kernel" not in str(q)
    assert q.kernel_path(x) == ("xla", f"backend {jax.default_backend()}")  # this suite runs on a CPU
    assert q.replace(estimator="dge").kernel_path(x)[1] == "estimator dge needs the scaled input"
    assert "whole blocks" in q.kernel_path(jnp.ones((256, 48)))[1]
    assert q.replace(kernel="pallas").kernel_path(x) == ("pallas", "kernel='pallas'")
    assert q.kernel_path(x, backend="gpu", device_count=1) == ("pallas", "one-pass kernel on a GPU")
    assert q.kernel_path(x, backend="gpu", device_count=4) == ("xla", "4 devices (the kernel is not partitioned)")
    assert q.replace(kernel="xla").kernel_path(x, backend="gpu", device_count=1) == ("xla", "kernel='xla'")
    assert q.replace(rounding="stochastic").kernel_path(x, backend="gpu", device_count=1)[0] == "xla"
    assert lp.quant.presets.MXFP8_E4M3.kernel_path(x, "gpu", 1)[1].endswith("more than 16 values or not symmetric")
    with caplog.at_level(logging.INFO, logger="lowprec.quant.quantizer"):
        q(x)
        q(x)
    assert caplog.text.count("XLA (backend cpu)") == 1  # once per quantizer and shape


def test_kernel_errors_name_the_field_and_the_reason():
    with pytest.raises(ValueError, match="unknown kernel 'triton'; known: auto, xla, pallas"):
        lp.quant.presets.MXFP4.replace(kernel="triton")
    with pytest.raises(ValueError, match=r"kernel='pallas' cannot quantize float32\[256, 48\]: shape"):
        lp.quant.presets.MXFP4.replace(kernel="pallas")(jnp.ones((256, 48)))
    with pytest.raises(ValueError, match="kernel='pallas' .* scales other than pow2_floor"):
        lp.quant.presets.NVFP4.replace(kernel="pallas")(jnp.ones((256, 64)))
