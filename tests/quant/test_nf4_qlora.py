"""lowprec.quant.nf4_qlora equals bitsandbytes' quantize_4bit/dequantize_4bit (nf4, blocksize 64,
compress_statistics=True) bit for bit on the fixture made by scripts/make_nf4_fixture.py."""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from lowprec.quant import nf4_qlora

FIX = np.load(pathlib.Path(__file__).parents[1] / "fixtures" / "nf4_qlora_bnb.npz")
CASES = sorted({k.split("/")[0] for k in FIX.files if "/" in k})


@pytest.mark.parametrize("case", CASES)
def test_matches_bitsandbytes(case):
    xb = FIX[case + "/x"]
    dtype = jnp.bfloat16 if xb.dtype == np.uint16 else jnp.float32
    x = jnp.asarray(xb).view(dtype)
    packed, c8, offset, am2 = nf4_qlora.quantize(x)
    np.testing.assert_array_equal(np.asarray(packed), FIX[case + "/codes"])
    np.testing.assert_array_equal(np.asarray(offset).view(np.uint32), FIX[case + "/offset"].view(np.uint32)[0])
    np.testing.assert_array_equal(np.asarray(am2).view(np.uint32), FIX[case + "/absmax2"].view(np.uint32))
    np.testing.assert_array_equal(np.asarray(c8), FIX[case + "/absmax_codes"])
    y = nf4_qlora.dequantize(packed, c8, offset, am2, x.shape, dtype)
    np.testing.assert_array_equal(np.asarray(y).view(xb.dtype), FIX[case + "/y"])


def test_dynamic_map_equals_bitsandbytes():
    np.testing.assert_array_equal(nf4_qlora.dynamic_map().view(np.uint32), FIX["dynamic_map"])


def test_dynamic_map_is_sorted_signed_8bit():
    # 127 negatives mirroring the 127 positives below 1, then 0 and 1: the lowest value is above -1
    m = nf4_qlora.dynamic_map()
    assert m.dtype == np.float32 and m.size == 256 and np.all(np.diff(m) > 0)
    assert m[127] == 0 and m[-1] == 1 and -1 < m[0] < -0.99
    np.testing.assert_array_equal(m[:127], -m[128:255][::-1])


def test_linspace32_rounds_like_torch():
    # torch's fp32 linspace(0.1, 1, 17) (one fused multiply-add per value) differs from numpy's
    got = nf4_qlora.linspace32(0.1, 1.0, 17)
    assert got[0] == np.float32(0.1) and got[-1] == 1
    assert not np.array_equal(got, np.linspace(0.1, 1.0, 17, dtype=np.float32))
