"""Every format that ml_dtypes implements agrees with it bit for bit.

ml_dtypes (a dependency of jax) is the independent reference: ``fmt.quantize(x,
overflow="ieee")`` must equal ``x.astype(ml_dtype).astype(x.dtype)`` on every bf16 and every
fp16 bit pattern and on dense fp32 sweeps around each representable value and each midpoint
(exact ties and their fp32 neighbours), above the largest value, over fp32 subnormals, ±0,
±inf and NaN payloads. NaN compares as "both NaN" (payloads are not part of the contract).

Two documented divergences are asserted, not skipped:
- formats without NaN (e2m1fn, e3m2fn, e2m3fn): ml_dtypes turns NaN into ±0; lowprec keeps NaN.
- e8m0fnu: ml_dtypes rounds fp32-subnormal inputs in (2**-127, 2**-126) up to 2**-126; those
  inputs are checked against a float64 round-to-nearest reference instead.
"""

import jax
import ml_dtypes
import numpy as np
import pytest

import lowprec as lp

ML_DTYPES = {
    "bf16": ml_dtypes.bfloat16, "fp16": np.float16, "e5m2": ml_dtypes.float8_e5m2,
    "e4m3": ml_dtypes.float8_e4m3, "e3m4": ml_dtypes.float8_e3m4, "e4m3fn": ml_dtypes.float8_e4m3fn,
    "e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "e4m3b11fnuz": ml_dtypes.float8_e4m3b11fnuz, "e3m2fn": ml_dtypes.float6_e3m2fn,
    "e2m3fn": ml_dtypes.float6_e2m3fn, "e2m1fn": ml_dtypes.float4_e2m1fn,
    "e8m0fnu": ml_dtypes.float8_e8m0fnu,
}
NO_NAN = ("e2m1fn", "e3m2fn", "e2m3fn")
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}
E8M0_TINY = 2.0 ** -127


def _code_count(dtype) -> int:
    return 2 ** ml_dtypes.finfo(dtype).bits


def _all_codes(dtype) -> np.ndarray:
    return np.arange(_code_count(dtype), dtype=UINT[np.dtype(dtype).itemsize]).view(dtype)


def _grid(dtype) -> np.ndarray:
    """All finite values of an ml_dtypes type, as sorted float64 (one zero)."""
    with np.errstate(invalid="ignore"):
        v = _all_codes(dtype).astype(np.float64)
    return np.unique(v[np.isfinite(v)]) + 0.0


def _all_patterns(dtype) -> np.ndarray:
    return np.arange(2 ** 16, dtype=np.uint16).view(dtype)


def _fp32_sweep(dtype) -> np.ndarray:
    """fp32 inputs around every value, every midpoint (exact ties) and the overflow threshold."""
    pos = _grid(dtype)
    pos = pos[pos > 0]
    top = pos[-1]
    step = 2.0 ** (np.floor(np.log2(top)) - ml_dtypes.finfo(dtype).nmant)
    ext = np.concatenate([[0.0], pos, [top + step]])  # the unbounded grid's next value past max
    mids = (ext[:-1] + ext[1:]) / 2
    centers = np.concatenate([ext, mids, [2 * top, 4 * top]])
    centers = centers[centers <= np.finfo(np.float32).max]
    c32 = centers.astype(np.float32)
    np.testing.assert_array_equal(c32.astype(np.float64), centers)  # ties are exact in fp32
    around = [c32]
    lo, hi = c32, c32
    for _ in range(3):
        lo, hi = np.nextafter(lo, np.float32(-np.inf)), np.nextafter(hi, np.float32(np.inf))
        around += [lo, hi]
    rng = np.random.default_rng(0)
    subnormal_bits = np.concatenate([np.arange(1, 4096), np.arange(4096, 2 ** 23, 4099)]).astype(np.uint32)
    random_bits = rng.integers(0, 2 ** 32, 2 ** 16, dtype=np.uint32)
    special_bits = np.array([0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x7F7FFFFF], np.uint32)
    x = np.concatenate(around + [subnormal_bits.view(np.float32), random_bits.view(np.float32),
                                 special_bits.view(np.float32), np.array([np.inf, np.nan], np.float32)])
    return np.concatenate([x, -x])


def _inputs(name):
    dtype = ML_DTYPES[name]
    return {"bf16": _all_patterns(ml_dtypes.bfloat16), "fp16": _all_patterns(np.float16),
            "fp32": _fp32_sweep(dtype)}


def _bits(a) -> np.ndarray:
    a = np.asarray(a)
    return a.view(UINT[a.dtype.itemsize])


def _mismatch(got, want, x) -> str:
    got, want = np.asarray(got), np.asarray(want)
    both_nan = np.isnan(got.astype(np.float32)) & np.isnan(want.astype(np.float32))
    bad = (_bits(got) != _bits(want)) & ~both_nan
    if not bad.any():
        return ""
    return (f"{bad.sum()} mismatches, e.g. x={x[bad][:6]} got={got[bad][:6]} "
            f"ml_dtypes={want[bad][:6]}")


def _divergent(name, x) -> tuple[np.ndarray, np.ndarray]:
    """Masks of inputs where ml_dtypes is known to differ: (NaN -> 0, e8m0 subnormal range)."""
    x32 = x.astype(np.float32)
    nan_to_zero = np.isnan(x32) if name in NO_NAN else np.zeros(x.shape, bool)
    sub = (x32 > E8M0_TINY) & (x32 < 2 * E8M0_TINY) if name == "e8m0fnu" else np.zeros(x.shape, bool)
    return nan_to_zero, sub


@pytest.mark.parametrize("name", ML_DTYPES)
def test_quantize_and_encode_match_ml_dtypes(name):
    """quantize(ieee) == ml_dtypes cast; encode == ml_dtypes bits where the cast is finite;
    decode(encode(x)) == the saturating quantize. One compilation per format."""
    fmt, dtype = lp.formats.get(name), ML_DTYPES[name]
    inputs = _inputs(name)

    @jax.jit
    def run(xs):
        codes = {k: fmt.encode(v) for k, v in xs.items()}
        return ({k: fmt.quantize(v, overflow="ieee") for k, v in xs.items()}, codes,
                {k: fmt.decode(c) for k, c in codes.items()},
                {k: fmt.quantize(v.astype(np.float32)) for k, v in xs.items()})

    got, codes, back, saturated = jax.device_get(run(inputs))
    for kind, x in inputs.items():
        assert got[kind].dtype == x.dtype, kind
        with np.errstate(invalid="ignore", over="ignore"):
            ml = x.astype(dtype)
            want = ml.astype(x.dtype)
        nan_to_zero, sub = _divergent(name, x)
        plain = ~(nan_to_zero | sub)
        msg = _mismatch(got[kind][plain], want[plain], x[plain])
        assert not msg, f"{name} quantize on {kind} inputs: {msg}"
        # Divergence 1: lowprec keeps NaN where ml_dtypes writes zero.
        assert np.all(np.isnan(got[kind][nan_to_zero].astype(np.float32)))
        assert np.all(want[nan_to_zero].astype(np.float32) == 0)
        # Divergence 2 (e8m0fnu): round to nearest in float64; ties (1.5 * 2**-127) go up.
        xs = x[sub].astype(np.float64)
        ref = np.where(xs - E8M0_TINY < 2 * E8M0_TINY - xs, E8M0_TINY, 2 * E8M0_TINY)
        np.testing.assert_array_equal(got[kind][sub].astype(np.float64), ref)
        # ml_dtypes < 0.7 rounds that whole range up to 2**-126; from 0.7 on it agrees with the reference.
        old_ml_dtypes = tuple(int(p) for p in ml_dtypes.__version__.split(".")[:2]) < (0, 7)
        np.testing.assert_array_equal(want[sub].astype(np.float64), 2 * E8M0_TINY if old_ml_dtypes else ref)
        if kind != "fp16" and name == "e8m0fnu":
            assert np.any(ref == E8M0_TINY), "the sweep must reach the divergent range"
        # encode: ml_dtypes' bit pattern wherever its cast is a finite number.
        finite = np.isfinite(ml.astype(np.float32)) & ~np.isnan(x.astype(np.float32)) & ~sub
        assert codes[kind].dtype == (np.uint16 if fmt.bits > 8 else np.uint8)
        bad = codes[kind][finite] != _bits(ml)[finite]
        assert not bad.any(), (f"{name} encode on {kind}: x={x[finite][bad][:6]} "
                               f"codes={codes[kind][finite][bad][:6]} ml_dtypes={_bits(ml)[finite][bad][:6]}")
        # decode(encode(x)) is the saturating quantization, bit for bit (NaN stays NaN where
        # the format has a NaN code).
        keep = ~nan_to_zero
        msg = _mismatch(back[kind][keep], saturated[kind][keep], x[keep])
        assert not msg, f"{name} decode(encode(x)) on {kind}: {msg}"


def test_nan_survives_every_format():
    x = np.array([0x7FC00000, 0xFFC00000, 0x7F800001], np.uint32).view(np.float32)
    for name in ML_DTYPES:
        fmt = lp.formats.get(name)
        out = jax.jit(lambda v: [fmt.quantize(v, overflow=o) for o in ("ieee", "saturate")])(x)
        assert np.all(np.isnan(np.asarray(out))), name


@pytest.mark.parametrize("name", ML_DTYPES)
def test_decode_every_code(name):
    """Every code decodes to ml_dtypes' value; every finite code encodes back to itself
    (encode saturates, so ±inf codes come back as ±max)."""
    fmt, dtype = lp.formats.get(name), ML_DTYPES[name]
    codes = _bits(_all_codes(dtype))
    want = _all_codes(dtype).astype(np.float32)
    got = np.asarray(jax.jit(fmt.decode)(codes))
    msg = _mismatch(got, want, codes)
    assert not msg, f"{name} decode: {msg}"
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.asarray(jax.jit(fmt.encode)(got[finite])), codes[finite])
    assert fmt.bits == ml_dtypes.finfo(dtype).bits
    assert fmt.max == float(ml_dtypes.finfo(dtype).max)
    np.testing.assert_array_equal(fmt.values(), _grid(dtype))
