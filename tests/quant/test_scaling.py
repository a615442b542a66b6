"""Scale rules against float64 references written from their definitions (REFERENCE.md §2)."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lowprec as lp
from lowprec.quant import scaling

ELEMENT_FORMATS = ["e2m1fn", "e4m3fn", "e5m2", "e3m2fn", "e2m3fn", "int8", "int4", "nf4"]
E8M0_MIN, E8M0_MAX = 2.0 ** -127, 2.0 ** 127


def _amaxes() -> np.ndarray:
    """Positive fp32 amax values over a wide range: random, powers of two, format maxima times
    powers of two (where floor / ceil change), their fp32 neighbours."""
    rng = np.random.default_rng(0)
    random = 2.0 ** rng.uniform(-60, 60, 3000)
    p2 = 2.0 ** np.arange(-60, 61)
    maxima = np.array([6, 448, 57344, 28, 7.5, 127, 7, 1])
    maxima = np.concatenate([maxima, 1.5 * maxima])[:, None] * p2[None, :]  # 1.5: pow2_nearest ties
    a = np.concatenate([random, p2, maxima.ravel()]).astype(np.float32)
    return np.concatenate([a, np.nextafter(a, np.float32(0)), np.nextafter(a, np.float32(np.inf))])


AMAX = _amaxes()


def _floor_log2(a):
    _, e = np.frexp(a)  # a = f * 2**e, f in [0.5, 1): exact
    return e - 1


def _scale(rule, fmt):
    return np.asarray(jax.jit(lambda a: scaling.scale_from_amax(a, fmt, rule))(AMAX), np.float64)


@pytest.mark.parametrize("name", ELEMENT_FORMATS)
def test_fp32_rule_is_the_exact_fp32_quotient(name):
    fmt = lp.formats.get(name)
    np.testing.assert_array_equal(_scale("fp32", fmt), AMAX / np.float32(fmt.max))


@pytest.mark.parametrize("name", ELEMENT_FORMATS)
def test_pow2_floor_is_the_ocp_rule(name):
    """2**(floor(log2 amax) - emax_elem), within E8M0's range [2**-127, 2**127]."""
    fmt = lp.formats.get(name)
    emax = int(np.floor(np.log2(fmt.max)))
    want = np.clip(2.0 ** (_floor_log2(AMAX.astype(np.float64)) - emax), E8M0_MIN, E8M0_MAX)
    np.testing.assert_array_equal(_scale("pow2_floor", fmt), want)


@pytest.mark.parametrize("name", ELEMENT_FORMATS)
def test_pow2_ceil_is_the_smallest_power_of_two_that_never_clips(name):
    fmt = lp.formats.get(name)
    a = AMAX.astype(np.float64)
    k = _floor_log2(a / fmt.max) - 1  # then step up, deciding with exact float64 products
    for _ in range(3):
        k = np.where(fmt.max * 2.0 ** k < a, k + 1, k)
    want = np.clip(2.0 ** k, E8M0_MIN, E8M0_MAX)
    got = _scale("pow2_ceil", fmt)
    np.testing.assert_array_equal(got, want)
    assert np.all(a / got <= fmt.max)


@pytest.mark.parametrize("name", ELEMENT_FORMATS)
def test_pow2_nearest_rounds_the_fp32_ratio_to_the_nearest_power_of_two(name):
    fmt = lp.formats.get(name)
    r = (AMAX / np.float32(fmt.max)).astype(np.float64)
    lo = 2.0 ** _floor_log2(r)
    want = np.clip(np.where(r - lo < 2 * lo - r, lo, 2 * lo), E8M0_MIN, E8M0_MAX)  # ties go up
    np.testing.assert_array_equal(_scale("pow2_nearest", fmt), want)


@pytest.mark.parametrize("name", ["e2m1fn", "int4"])
def test_format_scale_rounds_the_ratio_onto_e4m3(name):
    fmt = lp.formats.get(name)
    r = np.minimum(AMAX / np.float32(fmt.max), np.float32(448))  # saturating, as a scale must
    want = r.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    want = np.where(want > 0, want, 2.0 ** -9)  # below half the smallest value: the smallest
    np.testing.assert_array_equal(_scale("e4m3fn", fmt), want)


@pytest.mark.parametrize("rule", ["fp32", "pow2_floor", "pow2_ceil", "pow2_nearest", "e4m3fn"])
def test_zero_amax_gives_scale_one(rule):
    s = jax.jit(lambda a: scaling.scale_from_amax(a, lp.formats.get("e2m1fn"), rule))(jnp.zeros((3, 1)))
    np.testing.assert_array_equal(np.asarray(s), np.ones((3, 1)))


def test_amax_ignores_non_finite_entries():
    x = jnp.asarray([[1.0, -3.0, jnp.inf, jnp.nan], [jnp.nan, -jnp.inf, jnp.inf, jnp.nan], [-0.0, 0.0, 2.5, -7.0]])
    np.testing.assert_array_equal(np.asarray(scaling.amax(x, (1,))), [[3.0], [0.0], [7.0]])
    assert scaling.amax(x.astype(jnp.bfloat16), (1,)).dtype == jnp.float32


def test_unknown_rule_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        scaling.check_rule("pow3")
    for rule in scaling.SCALE_RULES:
        assert rule in str(err.value)
    scaling.check_rule("e8m0fnu")
    scaling.check_rule(lp.formats.get("e4m3fn"))


@pytest.mark.parametrize("name", ["MXFP4", "MXFP8_E4M3", "NVFP4", "NF4"])
def test_block_amax_by_slices_gives_the_same_bits(name):
    """Quantizer(block_amax="slices") traces a block's amax as an elementwise max of its slices
    (no reduce for it in the program): codes, scales and fake-quantized values are the same bits."""
    import jax

    from lowprec.quant import presets

    q = getattr(presets, name)
    qs = q.replace(block_amax="slices")
    assert "block_amax=slices" in str(qs) and "block_amax" not in str(q)
    x = jax.random.normal(jax.random.key(3), (48, 320), jnp.float32) * 5.0
    x = x.at[2, 7].set(jnp.inf).at[5, 100].set(-jnp.inf).at[9, 64:128].set(0.0).at[11, 3].set(1e-30)
    for fn in (lambda q, v: q(v), lambda q, v: q.quantize(v).codes, lambda q, v: q.quantize(v).dequantize()):
        plain, other = jax.jit(lambda v: fn(q, v))(x), jax.jit(lambda v: fn(qs, v))(x)
        np.testing.assert_array_equal(np.asarray(plain).view(np.uint8), np.asarray(other).view(np.uint8))
    # The programs differ as intended: one reduction fewer (the block amax's).
    reduces = {k: jax.jit(lambda v, k=k: k(v)).lower(x).as_text().count("stablehlo.reduce") for k in (q, qs)}
    assert reduces[qs] < reduces[q]
    blocks = jax.jit(lambda v: scaling.amax(v.reshape(48, 10, 32), (2,), "slices")).lower(x).as_text()
    assert "reduce" not in blocks and "maximum" in blocks
    with pytest.raises(ValueError, match="unknown block_amax 'tree'; known: reduce, slices"):
        q.replace(block_amax="tree")
    with pytest.raises(ValueError, match="unknown block amax 'tree'; known: reduce, slices"):
        scaling.amax(x, (1,), "tree")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_tensor_amax_is_the_all_axes_amax_in_the_inputs_dtype(dtype):
    """scaling.tensor_amax (what a per-tensor Quantizer uses) equals amax over every axis bit
    for bit, non-finite entries ignored, and reduces the input in its own dtype, not an fp32 copy."""
    x = (jax.random.normal(jax.random.key(5), (64, 48), jnp.float32) * 30.0).astype(dtype)
    for bad in ([], [(0, 0, jnp.inf), (3, 4, -jnp.inf), (7, 1, jnp.nan)]):
        v = x
        for i, j, val in bad:
            v = v.at[i, j].set(val)
        got = jax.jit(scaling.tensor_amax)(v)
        want = np.max(np.abs(np.asarray(v.astype(jnp.float32))), where=np.isfinite(np.asarray(v.astype(jnp.float32))),
                      initial=0.0)
        assert got.shape == (1, 1) and got.dtype == jnp.float32
        assert np.asarray(got).view(np.uint32)[0, 0] == np.float32(want).view(np.uint32)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(scaling.amax(v, (0, 1))))
    assert np.asarray(scaling.tensor_amax(jnp.full((4,), jnp.nan, dtype)))[0] == 0.0
    text = jax.jit(scaling.tensor_amax).lower(x).as_text()
    name = {jnp.float32: "f32", jnp.bfloat16: "bf16", jnp.float16: "f16"}[dtype]
    assert "optimization_barrier" in text and "stablehlo.reduce" in text
    assert f"tensor<64x48x{name}>" in text.split("stablehlo.reduce")[1].split("\n")[0]


def test_per_tensor_quantizer_takes_its_amax_from_the_raw_input():
    """A per-tensor quantizer's scale comes from tensor_amax of its (bf16) input: the same scale
    and output bits as from the fp32 upcast's amax, and no fp32 array reaches its reduction."""
    x = (jax.random.normal(jax.random.key(6), (32, 96), jnp.float32) * 7.0).astype(jnp.bfloat16)
    q = lp.Quantizer("e4m3fn", "tensor", scale="pow2_ceil")
    qt = jax.jit(q.quantize)(x)
    want = scaling.scale_from_amax(scaling.amax(x.astype(jnp.float32), (0, 1)), q.format, "pow2_ceil")
    np.testing.assert_array_equal(np.asarray(qt.scale), np.asarray(want))
    ref = q.format.quantize(x.astype(jnp.float32) / want) * want
    np.testing.assert_array_equal(np.asarray(jax.jit(q)(x)).view(np.uint16),
                                  np.asarray(ref.astype(jnp.bfloat16)).view(np.uint16))
    text = jax.jit(q).lower(x).as_text()
    reduces = [line for line in text.split("\n") if "stablehlo.reduce" in line]
    assert reduces and all("x96xf32>" not in line for line in reduces)
