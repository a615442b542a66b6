"""The one-pass MX kernel (experiments.mx_pallas) against the library's XLA path, bit for bit,
in the Pallas interpreter: ties at every midpoint, saturation, inf, NaN, -0, all-zero blocks,
blocks whose amax is subnormal, and formats other than E2M1."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowprec as lp
from experiments import benchmark_quantize, mx_pallas


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
    assert mx_pallas.supported(q, x) is None
    got, want = np.asarray(mx_pallas.block_fake_quant(q, x)), np.asarray(jax.jit(q)(x))
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(np.where(nan, 0, got).view(np.uint32), np.where(nan, 0, want).view(np.uint32))


def test_unsupported_quantizers_say_why():
    x = jnp.zeros((256, 32))
    assert "pow2_floor" in mx_pallas.supported(lp.quant.presets.NVFP4, x)
    assert "more than 16 values" in mx_pallas.supported(lp.Quantizer("e4m3fn", "block(32)", scale="pow2_floor"), x)
    assert "whole tiles" in mx_pallas.supported(lp.quant.presets.MXFP4, jnp.zeros((8, 32)))
    with pytest.raises(ValueError, match="block_fake_quant: granularity"):
        mx_pallas.block_fake_quant(lp.Quantizer("e2m1fn", "channel"), x)


def test_benchmark_quantize_times_it_and_checks_its_bits(tmp_path):
    out = tmp_path / "q.json"
    benchmark_quantize.main(["--gib", "0.001", "--repeats", "1", "--only", "MXFP4", "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"copy", "amax only (read)", benchmark_quantize.PALLAS_MXFP4}
    assert results[benchmark_quantize.PALLAS_MXFP4]["same_bits_as_xla"] is True
