"""Scales at fp32's subnormal edge (issue 22, item 1): every preset and scale rule is exact there.

The reference is written here in float64 from the rules (``scaling.scale_from_amax``'s
docstring): each group's scale from its amax, ``1/scale`` rounded to 24 bits (unbounded
exponent), ``x * (1/scale)`` rounded to fp32, rounded onto the format's grid (nearest, ties to
the even code, saturating) and multiplied back by the scale. ``q(x)`` and
``quantize(x).dequantize()`` must equal it wherever it is 0 or a normal fp32 number, and never be
NaN. On XLA:CPU subnormal inputs read as 0 (documented in ``scaling``): there the reference
starts from the input with its subnormals flushed, as the backend sees it.
"""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import lowprec as lp
from lowprec.quant import Quantizer, presets, scaling

MIN_NORMAL = 2.0 ** -126
# Group magnitudes from ~8e-31 down to ~7e-43: normal scales, scales that are subnormal, inverse
# scales past fp32's range, and inputs that are themselves subnormal.
MAGNITUDES = [2.0 ** -100, 2.0 ** -112, 2.0 ** -118, 2.0 ** -122, 2.0 ** -125, 2.0 ** -127.5,
              2.0 ** -131, 2.0 ** -140]
RULES = list(scaling.SCALE_RULES) + ["e4m3fn", "e8m0fnu"]
E4M3 = ml_dtypes.float8_e4m3fn


def _data(magnitude, coarse=False, shape=(8, 64)):
    """Rows scaled 2**-j below ``magnitude``, with zeros: a zero block (row 3's first 32), a zero
    column (5), a zero row (6), and one large value (1.0) mixed into row 7 (its second block of 32).
    ``coarse``: values on a 1/128 grid (so that sums of block amaxes are exact, for NF4's mean)."""
    rng = np.random.default_rng(int(-np.log2(magnitude) * 8))
    u = rng.uniform(-1, 1, shape)
    if coarse:
        u = np.round(u * 128) / 128
    x = u * magnitude * 2.0 ** -np.arange(shape[0])[:, None] ** 0.5
    x = x.astype(np.float32)
    x[3, :32] = 0
    x[:, 5] = 0
    x[6] = 0
    x[7, shape[1] - 24] = 1.0
    return x


def _seen(x):
    """The input as the backend reads it (XLA:CPU treats subnormal operands as 0)."""
    x = np.asarray(x, np.float64)
    return np.where(np.abs(x) < MIN_NORMAL, 0.0, x) if jax.default_backend() == "cpu" else x


# ---------------------------------------------------------------- float64 reference
def _f32(v):
    return np.asarray(v, np.float64).astype(np.float32).astype(np.float64)


def _round24(v):
    """``v`` rounded to a 24-bit significand, nearest-even, with an unbounded exponent."""
    m, e = np.frexp(np.asarray(v, np.float64))
    return np.ldexp(np.round(np.ldexp(m, 24)), e - 24)


def _pow2(k):
    return np.ldexp(1.0, np.clip(k, -127, 127).astype(np.int64))


def _floor_log2(a):
    return np.frexp(a)[1] - 1


def _round_grid(v, grid):
    """Nearest value of the sorted ``grid`` to each ``v`` (saturating), ties to the even index."""
    v = np.clip(v, grid[0], grid[-1])
    hi = np.clip(np.searchsorted(grid, v), 1, len(grid) - 1)
    lo = hi - 1
    dlo, dhi = v - grid[lo], grid[hi] - v
    pick = np.where(dlo < dhi, lo, np.where(dhi < dlo, hi, np.where(lo % 2 == 0, lo, hi)))
    return grid[pick]


@functools.lru_cache(maxsize=None)
def _values(fmt):
    return np.unique(np.asarray(fmt.values(), np.float64))


def _round_format(v, fmt):
    """Round-to-nearest-even onto ``fmt``: by magnitude on a symmetric grid (code parity = index
    parity among the non-negative values), else on the whole table."""
    values = _values(fmt)
    pos = values[values >= 0]
    if np.array_equal(values[values > 0], -values[values < 0][::-1]):
        return np.sign(v) * _round_grid(np.abs(v), pos)
    return _round_grid(v, values)


def _rule_scale(am, fmt, rule):
    """The scale of each group (float64, an fp32 value) from its amax by ``rule``."""
    am = np.asarray(am, np.float64)
    safe = np.where(am == 0, 1.0, am)
    if rule == "fp32":
        s = _f32(safe / fmt.max)
    elif rule == "pow2_floor":
        s = _pow2(_floor_log2(safe) - fmt.emax)
    elif rule == "pow2_ceil":
        k = _floor_log2(safe / fmt.max)
        s = _pow2(np.where(safe <= fmt.max * np.ldexp(1.0, k), k, k + 1))
    elif rule == "pow2_nearest":
        v = _f32(safe / fmt.max)
        k = _floor_log2(v)
        frac = v / np.ldexp(1.0, k)  # in [1, 2): 1.5 is the midpoint between 2**k and 2**(k+1)
        even_up = (k + 127) % 2 == 1
        s = _pow2(np.where((frac > 1.5) | ((frac == 1.5) & even_up), k + 1, k))
    elif rule == "floor_x4/3":  # Tseng et al.: the OCP scale times fp32(4/3)
        s = _f32(_rule_scale(safe, fmt, "pow2_floor") * np.float64(np.float32(4 / 3)))
    elif rule == "pow2_ceil_bf16":  # the FP4 paper's code: bf16 quotient and log2, then floor
        a = safe.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)
        with np.errstate(over="ignore"):
            quotient = np.float32(fmt.max) / a.astype(np.float32)
        quotient = quotient.astype(ml_dtypes.bfloat16).astype(np.float64)
        with np.errstate(divide="ignore"):
            n = np.floor(np.log2(quotient).astype(ml_dtypes.bfloat16).astype(np.float64))
        s = _pow2(np.where(np.isfinite(n), -n, -127))
    else:
        sfmt = lp.formats.get(rule)
        s = _round_format(_f32(safe / fmt.max), sfmt)
        s = np.where(s == 0, sfmt.tiny, s)
    return np.where(am == 0, 1.0, s)


@functools.lru_cache(maxsize=None)
def _groups(granularity, shape):
    """(index of each grouped element into the flat input, -1 for padding; reduce axes); one per
    granularity, shared by the quantizers that group alike."""
    idx = jnp.arange(1, int(np.prod(shape)) + 1, dtype=jnp.float32).reshape(shape)
    g, axes = granularity.to_groups(idx)
    return np.asarray(g).astype(np.int64) - 1, tuple(axes)


def reference(q, x):
    """``q(x)`` by the rules, in float64; entries whose result is subnormal are NaN (unchecked)."""
    idx, axes = _groups(q.granularity, x.shape)
    xs_flat = _seen(x).reshape(-1)
    xg = np.where(idx >= 0, xs_flat[np.maximum(idx, 0)], 0.0)
    am = np.max(np.abs(xg), axis=axes, keepdims=True)
    if q.tensor_scale:  # NVFP4: fp32 tensor scale, group scales on the scale format's grid
        t_am = am.max()
        ts = _f32(t_am / (q.format.max * lp.formats.get(q.scale).max)) if t_am > 0 else 1.0
        group = _rule_scale(_f32(am / ts), q.format, q.scale)
        s = _f32(group * ts)
    elif q.scale == "quest":  # from the group's std (QuEST): 2**floor(log2(ratio * std + eps))
        n = np.sum(idx >= 0, axis=axes, keepdims=True)
        var = np.sum(xg * xg, axis=axes, keepdims=True) / n - (np.sum(xg, axis=axes, keepdims=True) / n) ** 2
        stat = _f32(scaling.QUEST_RATIO * np.sqrt(np.maximum(var, 0.0)) + scaling.QUEST_EPS)
        s = _pow2(_floor_log2(stat))
    else:
        s = _rule_scale(am, q.format, q.scale)
    if q.double_quant is not None:  # NF4: the scales minus their mean, quantized again
        mean = _f32(s.mean())
        d = _f32(s.reshape(-1) - mean)
        rebuilt = reference(q.double_quant, d.astype(np.float32))
        s = _f32(rebuilt.reshape(s.shape) + mean)
    inv = np.where(s == 0, 0.0, _round24(1.0 / s))
    v = _round_format(_f32(xg * inv), q.format)
    y = _f32(v * s)
    out = np.zeros(x.size)
    out[idx[idx >= 0]] = y[idx >= 0]
    out = out.reshape(x.shape)
    return np.where((out == 0) | (np.abs(out) >= MIN_NORMAL), out, np.nan)


# ---------------------------------------------------------------- checks
def _both(q, x):
    return q(x), q.quantize(x).dequantize()


@functools.partial(jax.jit, static_argnums=0)
def _jitted(q, xs):
    return jax.vmap(functools.partial(_both, q))(xs)


def _compare(q, got, want, how):
    checked = ~np.isnan(want)
    assert not np.isnan(got).any(), f"{q} {how}: NaN"
    bad = checked & (got.astype(np.float64) != want)
    assert not bad.any(), f"{q} {how}: {bad.sum()} of {checked.sum()} differ, e.g. {got[bad][:3]} vs {want[bad][:3]}"


@functools.lru_cache(maxsize=None)
def _inputs(coarse):
    """One input per magnitude, stacked (built once; read-only)."""
    xs = np.stack([_data(m, coarse) for m in MAGNITUDES])
    xs.setflags(write=False)
    return xs


def _check(q, coarse=False):
    """``q`` jitted on one input per magnitude (vmapped: each its own tensor)."""
    xs = _inputs(coarse)
    want = np.stack([reference(q, x) for x in xs])
    checked = ~np.isnan(want)
    assert checked[:, 7, 40].all() and (want[:, 6] == 0).all()  # the large value is checked; the zero row
    y, back = _jitted(q, jnp.asarray(xs))
    _compare(q, np.asarray(y), want, "jit q(x)")
    _compare(q, np.asarray(back), want, "jit dequantize")
    return checked


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_presets_exact_at_tiny_magnitudes(preset):
    q = presets.get(preset)
    checked = _check(q, coarse=q.double_quant is not None)
    assert checked.sum(axis=(1, 2))[0] > 400  # at 2**-100 nearly every result is normal and checked


def test_presets_exact_at_tiny_magnitudes_without_jit():
    for preset in ("nvfp4",):
        q = presets.get(preset)
        x = _data(2.0 ** -125)
        want = reference(q, x)
        y, back = _both(q, jnp.asarray(x))
        _compare(q, np.asarray(y), want, "eager q(x)")
        _compare(q, np.asarray(back), want, "eager dequantize")


@pytest.mark.parametrize("rule", RULES)
def test_scale_rules_exact_at_tiny_magnitudes(rule):
    for fmt, granularity in (("e2m1fn", "block(32)"), ("int8", "tensor"), ("e4m3fn", "channel")):
        _check(Quantizer(fmt, granularity, scale=rule))


def test_block_kernel_exact_at_tiny_magnitudes():
    q = presets.MXFP4.replace(kernel="pallas")
    for magnitude in MAGNITUDES[3:]:
        x = _data(magnitude)
        want = reference(q, x)
        got = np.asarray(jax.jit(q)(jnp.asarray(x)))
        assert not np.isnan(got).any()
        checked = ~np.isnan(want)
        np.testing.assert_array_equal(got[checked], want[checked])


def _dense_reference(recipe, x, w):
    """The forward of an OCC recipe from its (exact) quantizers, in float64: ``q_act(xc) @ q_w(w)``
    plus, where it compensates, ``residual @ w`` in the residual's dtype (separate) or the residual
    joined to ``q_act(xc)`` before the GEMM (fused)."""
    from lowprec.ops import operand
    from lowprec.quant import occ as occ_lib
    q_act, q_w = recipe.fwd_act, recipe.fwd_weight
    xc, residual = occ_lib.clamp(x, q_act.occ)
    a = operand.bind(q_act.replace(occ=None), (1,))(xc)
    b = np.asarray(operand.bind(q_w, (0,))(w), np.float64)
    if not q_act.occ.compensate:  # clamp only
        return np.asarray(a, np.float64) @ b
    if recipe.compensation == "fused":
        joined = (a + residual.astype(jnp.float32)).astype(residual.dtype)
        return np.asarray(joined.astype(jnp.float32), np.float64) @ b
    w_r = np.asarray(w.astype(residual.dtype).astype(jnp.float32), np.float64)
    return np.asarray(a, np.float64) @ b + np.asarray(residual.astype(jnp.float32), np.float64) @ w_r


@pytest.mark.parametrize("recipe", ["mxfp8", "nvfp4", "fp8", "mxfp4", "fp4_msamp", "w4a4", "fp4_paper",
                                    "fp4_paper_fast"])
def test_quant_dense_step_has_no_nan_at_tiny_magnitudes(recipe):
    dense = lp.nn.QuantDense(64, 32, recipe=recipe, rngs=nnx.Rngs(0))
    dense.kernel.value = jnp.asarray(_data(2.0 ** -118, shape=(64, 32)))
    graph, params = nnx.split(dense)
    x = jnp.asarray(_data(2.0 ** -127.5, shape=(16, 64)))

    @jax.jit
    def step(params, x):
        def loss(params, x):
            y = nnx.merge(graph, params)(x)
            return jnp.sum(y ** 2), y
        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)

    (value, y), (g_params, g_x) = step(params, x)
    assert np.isfinite(value)
    for g in jax.tree.leaves(g_params) + [g_x]:
        assert np.isfinite(np.asarray(g)).all()
    r = lp.recipes.get(recipe)
    if recipe in ("fp4_paper", "fp4_paper_fast"):  # OCC's forward: exact quantizers and compensation
        want = _dense_reference(r, x, dense.kernel.value)
        normal = np.abs(want) >= MIN_NORMAL
        if r.fwd_act.occ.compensate and r.compensation == "separate":  # the residual GEMM's normal results
            assert normal.any()
        np.testing.assert_array_equal(np.asarray(y, np.float64)[normal], want[normal])
