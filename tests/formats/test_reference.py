"""Formats ml_dtypes lacks, checked against an independent float64 numpy reference.

The reference (formats_reference.py) enumerates each value set from its definition
(REFERENCE.md §1: normal (-1)^s 2^(E-b) (1 + M/2^m), subnormal (-1)^s 2^(1-b) M/2^m;
integers k 2^-f; a codebook's table) and rounds in float64 by each mode's definition. Every
rounding mode is compared bit for bit (both overflow policies for floats), then the
properties: idempotent, monotone, odd symmetry, error <= half a step for round-to-nearest.
"""

import jax
import ml_dtypes
import numpy as np
import pytest
from formats_reference import float_magnitudes, float_step, int_grid, ref_float, ref_grid, sweep
from hypothesis import given, settings
from hypothesis import strategies as st

import lowprec as lp
from lowprec.formats import Codebook, FloatFormat, IntFormat

MODES = ("nearest_even", "nearest_away", "toward_zero", "down", "up")
MIRROR = {"down": "up", "up": "down"}  # q_mode(-x) == -q_mirror(x)
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)

# name -> (exp_bits, man_bits, bias, specials, subnormals), from REFERENCE.md's table.
# e1m2 uses the IEEE default bias 2**(1-1)-1 = 0, which gives the table's values.
NAMED_FLOATS = {
    "e1m2": (1, 2, 0, "none", True), "e3m0": (3, 0, 3, "none", True),
    "e2m1fn": (2, 1, 1, "none", True), "e3m2fn": (3, 2, 3, "none", True),
    "e2m3fn": (2, 3, 1, "none", True), "e4m3fn": (4, 3, 7, "fn", True),
    "e4m3fnuz": (4, 3, 8, "fnuz", True), "e5m2": (5, 2, 15, "ieee", True),
    "e5m2fnuz": (5, 2, 16, "fnuz", True), "e4m3b11fnuz": (4, 3, 11, "fnuz", True),
    "e4m3": (4, 3, 7, "ieee", True), "e3m4": (3, 4, 3, "ieee", True),
}


def _same(got, want) -> np.ndarray:
    got = np.asarray(got, np.float32)
    want = np.asarray(want, np.float64).astype(np.float32)
    return (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))


def _check(fmt, x, ref, overflows=("saturate",), odd_modes=MODES) -> dict:
    """quantize == reference for every mode, then the properties (odd symmetry for
    ``odd_modes``); returns the saturating outputs."""
    results = {}
    for overflow in overflows:
        outs = {}
        for mode in MODES:
            got = np.asarray(fmt.quantize(x, mode, overflow=overflow))
            want = ref(x, mode, overflow)
            ok = _same(got, want)
            assert ok.all(), (f"{fmt.name} {mode} {overflow}: x={x[~ok][:6]} got={got[~ok][:6]} "
                              f"want={want[~ok][:6]}")
            outs[mode] = got
        _check_properties(fmt, x, outs, overflow, odd_modes)
        results[overflow] = outs
    return results["saturate"]


def _check_properties(fmt, x, outs, overflow, odd_modes):
    finite = ~np.isnan(x)
    order = np.lexsort((~np.signbit(x[finite]), x[finite]))  # IEEE total order: -0 before +0
    half = x.size // 2
    for mode, q in outs.items():
        again = np.asarray(fmt.quantize(q, mode, overflow=overflow))
        assert _same(again, q).all(), f"{fmt.name} {mode}: not idempotent"
        qs = q[finite][order]
        qs = qs[~np.isnan(qs)]
        assert np.all(qs[1:] >= qs[:-1]), f"{fmt.name} {mode}: not monotone"
        if mode in odd_modes:  # the second half of x is -(first half)
            mirrored = outs[MIRROR.get(mode, mode)]
            a, b = q[half:], -mirrored[:half]
            assert np.all((a == b) | (np.isnan(a) & np.isnan(b))), f"{fmt.name} {mode}: not odd"


def _check_half_step(fmt, x, outs, step_of, lo, hi):
    """|q(x) - x| <= step(x) / 2 for round-to-nearest within the range [lo, hi]."""
    inside = (x >= lo) & (x <= hi)
    xi = x[inside].astype(np.float64)
    for mode in ("nearest_even", "nearest_away"):
        q = outs[mode][inside].astype(np.float64)
        assert np.all(np.abs(q - xi) <= step_of(xi) / 2), f"{fmt.name} {mode}"


# ---------------------------------------------------------------- float formats
def _float_case(fmt, spec):
    P = float_magnitudes(*spec)
    top_step = 2.0 ** (np.floor(np.log2(P[-1])) - spec[1])
    x = sweep(P, top_step)
    outs = _check(fmt, x, lambda xx, mode, overflow: ref_float(xx, spec, mode, overflow), ("saturate", "ieee"))
    _check_half_step(fmt, x, outs, float_step(spec), -P[-1], P[-1])
    np.testing.assert_array_equal(fmt.values(), np.unique(np.concatenate([-P, P])) + 0.0)
    assert fmt.max == P[-1]


@pytest.mark.parametrize("name", NAMED_FLOATS)
def test_named_float_formats_match_reference(name):
    _float_case(lp.formats.get(name), NAMED_FLOATS[name])


# Edges of fp32: the smallest step 2**-126 (half of it is an fp32 subnormal), 2**-149, values in
# fp32's subnormal range with and without -0, the largest exponent 127, no subnormals.
EDGE_FLOATS = [(4, 3, 124, "none", True), (4, 3, 123, "ieee", True), (3, 2, 147, "none", True),
               (4, 3, 140, "fnuz", True), (4, 3, 140, "fn", True), (8, 1, 127, "ieee", True),
               (8, 1, 128, "none", True), (4, 2, 7, "none", False), (5, 3, 130, "fnuz", False)]


@pytest.mark.parametrize("spec", EDGE_FLOATS, ids=str)
def test_edge_float_formats_match_reference(spec):
    e, m, bias, specials, subnormals = spec
    _float_case(FloatFormat(e, m, bias=bias, specials=specials, subnormals=subnormals), spec)


@st.composite
def float_specs(draw):
    """Valid (exp_bits, man_bits, bias, specials, subnormals) drawn from the definition."""
    e = draw(st.integers(1, 8))
    m = draw(st.integers(0, min(9 - e, 6)))
    specials = draw(st.sampled_from(["none", "fnuz"] + (["fn"] if e >= 2 or m >= 1 else [])
                                    + (["ieee"] if e >= 2 else [])))
    subnormals = draw(st.booleans())
    top_field = 2 ** e - 1 - (specials == "ieee" or specials == "fn" and m == 0)
    emin_lo = -149 + (m if subnormals else 0)  # the smallest step must be an fp32 number
    bias_lo, bias_hi = top_field - 127, 1 - emin_lo
    default = 2 ** (e - 1) - (0 if specials == "fnuz" else 1)
    near = st.integers(max(bias_lo, default - 4), min(bias_hi, default + 4))
    choices = [near, st.integers(bias_lo, bias_hi)]
    if bias_lo <= default <= bias_hi:  # e.g. e8m0 without specials needs a larger bias
        choices.append(st.just(None))
    bias = draw(st.one_of(*choices))
    return e, m, bias, specials, subnormals, default


@SETTINGS
@given(float_specs())
def test_drawn_float_formats_match_reference(spec):
    e, m, bias, specials, subnormals, default = spec
    fmt = FloatFormat(e, m, bias=bias, specials=specials, subnormals=subnormals)
    assert fmt.bias == (default if bias is None else bias)
    _float_case(fmt, (e, m, fmt.bias, specials, subnormals))


def test_table_facts():
    """REFERENCE.md's value sets and maxima."""
    def pm(*v):
        return np.unique(np.concatenate([np.negative(v), v])) + 0.0

    np.testing.assert_array_equal(lp.formats.get("e1m2").values(), pm(0, .5, 1, 1.5, 2, 2.5, 3, 3.5))
    np.testing.assert_array_equal(lp.formats.get("e3m0").values(), pm(0, .25, .5, 1, 2, 4, 8, 16))
    np.testing.assert_array_equal(lp.formats.get("e2m1fn").values(), pm(0, .5, 1, 1.5, 2, 3, 4, 6))
    maxima = {"e4m3fn": 448, "e4m3fnuz": 240, "e5m2": 57344, "e3m2fn": 28, "e2m3fn": 7.5, "e2m1fn": 6,
              "e1m2": 3.5, "e3m0": 16, "fp16": 65504, "int8": 127, "int4": 7}
    for name, v in maxima.items():
        assert lp.formats.get(name).max == v, name


def test_subnormals_off_flushes_and_values_agree():
    """subnormals=False: below the smallest normal only 0 and min_normal remain, everywhere."""
    fmt = FloatFormat(3, 2, subnormals=False)  # min normal 2**-2
    x = np.array([0.05, 0.125, 0.126, 0.2, -0.124, -0.13], np.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(fmt.quantize)(x)), [0, 0, 0.25, 0.25, -0.0, -0.25])
    assert not np.any((np.abs(fmt.values()) > 0) & (np.abs(fmt.values()) < 0.25))


# ---------------------------------------------------------------- integer formats
def _int_case(fmt, bits, signed, narrow_range, frac_bits):
    g = int_grid(bits, signed, narrow_range, frac_bits)
    x = sweep(g, top_step=2.0 ** -frac_bits)
    odd = MODES if signed and narrow_range else ()
    outs = _check(fmt, x, lambda xx, mode, overflow: ref_grid(xx, g, mode, tie_by_index=False), odd_modes=odd)
    _check_half_step(fmt, x, outs, lambda xx: np.full_like(xx, 2.0 ** -frac_bits), g[0], g[-1])
    np.testing.assert_array_equal(fmt.values(), g)
    assert (fmt.min, fmt.max) == (g[0], g[-1])


@pytest.mark.parametrize("name,args", [
    ("int8", (8, True, True, 0)), ("int4", (4, True, True, 0)), ("int2", (2, True, True, 0)),
    ("int4_full", (4, True, False, 0)), ("uint4", (4, False, True, 0)), ("mxint8", (8, True, True, 6)),
])
def test_named_int_formats_match_reference(name, args):
    _int_case(lp.formats.get(name), *args)


@SETTINGS
@given(st.booleans(), st.integers(1, 9), st.booleans(), st.integers(0, 12))
def test_drawn_int_formats_match_reference(signed, bits, narrow_range, frac_bits):
    bits = max(bits, 2) if signed else bits
    _int_case(IntFormat(bits, signed=signed, narrow_range=narrow_range, frac_bits=frac_bits),
              bits, signed, narrow_range, frac_bits)


# ---------------------------------------------------------------- codebooks
def _codebook_case(fmt, values):
    g = np.asarray(values, np.float32).astype(np.float64)
    x = sweep(g)
    # A symmetric table is odd-symmetric, except nearest_even's even-index ties when its size
    # is even (index i mirrors to n-1-i, of the other parity).
    odd = () if not np.array_equal(g, -g[::-1]) else MODES if g.size % 2 else MODES[1:]
    outs = _check(fmt, x, lambda xx, mode, overflow: ref_grid(xx, g, mode, tie_by_index=True), odd_modes=odd)

    def gap(xx):  # the local step: the distance between the two table values around x
        i = np.clip(np.searchsorted(g, xx, side="right") - 1, 0, len(g) - 2)
        return g[i + 1] - g[i]
    _check_half_step(fmt, x, outs, gap, g[0], g[-1])
    np.testing.assert_array_equal(fmt.values(), g)


@pytest.mark.parametrize("name,values", [("nf4", lp.formats.NF4_VALUES), ("lut4_primer", lp.formats.PRIMER_LUT4_VALUES)])
def test_named_codebooks_match_reference(name, values):
    _codebook_case(lp.formats.get(name), values)


@SETTINGS
@given(st.sampled_from([2, 3, 16]).flatmap(
    lambda n: st.lists(st.integers(-2 ** 20, 2 ** 20), min_size=n, max_size=n, unique=True)),
    st.integers(0, 20), st.booleans())
def test_drawn_codebooks_match_reference(ints, shift, symmetric):
    """Tables on a 2**-shift grid: midpoints are exact in fp32, so exact ties occur. (A few
    table sizes only: eager jax compiles once per size.)"""
    v = np.asarray(ints, np.float64) * 2.0 ** -shift
    if symmetric:
        v = np.concatenate([v, -v])
    v = np.unique(v) + 0.0  # one, unsigned, zero
    if v.size < 2:
        v = np.array([-1.0, 1.0])
    _codebook_case(Codebook(v), v)


def test_primer_and_nf4_tables_match_reference_text():
    """The tables as REFERENCE.md prints them (NF4 to its 7 decimals)."""
    primer = [-1.0, -0.87, -0.73, -0.6, -0.47, -0.33, -0.2, -0.07, 0.07, 0.2, 0.33, 0.47, 0.6, 0.73, 0.87, 1.0]
    nf4 = [-1, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0,
           0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0]
    np.testing.assert_array_equal(lp.formats.get("lut4_primer").values(), np.float32(primer).astype(np.float64))
    np.testing.assert_allclose(lp.formats.get("nf4").values(), nf4, rtol=0, atol=5e-8)
    assert lp.formats.get("nf4").bits == lp.formats.get("lut4_primer").bits == 4


# ---------------------------------------------------------------- dtypes
@pytest.mark.parametrize("name", ["e2m1fn", "e4m3fn", "e3m0", "int4", "nf4"])
def test_dtype_and_shape_preserved(name):
    """Same shape and dtype out; a bf16/fp16 input gives the fp32 result cast once."""
    fmt = lp.formats.get(name)
    x32 = np.random.default_rng(1).normal(size=(3, 5, 7)).astype(np.float32) * 4
    inputs = [x32] + [x32.astype(dt) for dt in (ml_dtypes.bfloat16, np.float16)]
    outs = jax.jit(lambda xs: [fmt.quantize(x) for x in xs] + [fmt.quantize(x.astype(np.float32)) for x in xs])(inputs)
    for x, q, q32 in zip(inputs, outs[:3], outs[3:]):
        q, q32 = np.asarray(q), np.asarray(q32)
        assert q.dtype == x.dtype and q.shape == x.shape
        np.testing.assert_array_equal(q.astype(np.float32), q32.astype(x.dtype).astype(np.float32))
