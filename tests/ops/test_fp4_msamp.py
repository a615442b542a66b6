"""``fp4_msamp`` against a numpy port of the released MS-AMP FP4 code (``msamp_reference``):
scales, the weight and activation quantizers bit for bit, the DGE derivative to fp32 rounding,
and a QuantDense forward and backward."""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import lowprec as lp
import msamp_reference as ref
from lowprec.formats import get
from lowprec.ops import recipes
from lowprec.quant import occ as occ_lib
from lowprec.quant import pow2_bf16
from lowprec.quant.estimators import dge_derivative

BF16, F32 = ml_dtypes.bfloat16, np.float32
R = recipes.fp4_msamp
E2M1 = get("e2m1fn")
POSITIVE_BF16 = np.arange(1, 0x7F80, dtype=np.uint16).view(BF16)  # every positive finite bf16


def same_values(lowprec, port):
    """Bit-equal bf16 arrays, but for the sign of zero: the kernel writes +0 for every value it
    rounds to 0, lowprec keeps the input's sign (-0 for a negative one)."""
    a = np.asarray(lowprec).astype(BF16)
    b = np.asarray(port).astype(BF16)
    assert a.shape == b.shape
    zero = (a.astype(F32) == 0) & (b.astype(F32) == 0)
    bad = (a.view(np.uint16) != b.view(np.uint16)) & ~zero
    assert not bad.any(), f"{bad.sum()} of {bad.size} differ, e.g. {a[bad][:5]} vs {b[bad][:5]}"


def heavy(seed, shape, df=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) if df is None else rng.standard_t(df, shape)
    return (x * 0.05).astype(F32).astype(BF16)


def port_sf(amax):
    return ref.compute_scaling_factor(np.asarray(amax, BF16), np.ones((), BF16), 6.0, 0).astype(F32)


def tie_heavy(seed, shape, amaxes):
    """bf16 values on E2M1 grid points and midpoints of their group's scaled range: each row
    ``i`` has amax ``amaxes[i]`` (in its first entry) and its other entries at ``m / sf`` for
    E2M1 values and midpoints ``m`` (random signs) no larger than the amax."""
    rng = np.random.default_rng(seed)
    points = np.array(sorted(set(np.abs(ref.E2M1_MIDPOINTS)) | set(np.abs(ref.E2M1_VALUES)) | {6.0}), F32)
    rows = []
    for a in np.asarray(amaxes, BF16).astype(F32):
        cand = points / port_sf(a)
        cand = cand[cand <= a]
        row = rng.choice(cand, shape[1]) * rng.choice([-1, 1], shape[1])
        row[0] = a * rng.choice([-1, 1])
        rows.append(row)
    return np.asarray(rows, F32).astype(BF16)


# amaxes whose bf16 multiplier is twice the exact one (quotient or its log2 rounds up), the
# amaxes where one division would differ from the code's reciprocal-then-multiply, and others.
with np.errstate(all="ignore"):
    _A = POSITIVE_BF16.astype(F32)
    _SF = port_sf(POSITIVE_BF16)
    _DOUBLED = POSITIVE_BF16[(_A > 1e-6) & (_A < 1e6) & (_A * _SF > 6)]
    _ONE_DIV = POSITIVE_BF16[(np.floor(np.log2(ref.bf16(6 / _A).astype(F32)).astype(BF16).astype(F32))
                              != np.log2(_SF)) & (_A > 2.0 ** -125) & (_A < 2.0 ** 126)]
SPECIAL_AMAX = np.concatenate([_DOUBLED[::max(1, _DOUBLED.size // 40)], _ONE_DIV,
                               np.array([1.0, 6.0, 0.75, 3.0, 1e-3, 250.0], BF16)])


def test_bf16_scales_equal_the_code_for_every_bf16_amax():
    a = POSITIVE_BF16[(POSITIVE_BF16.astype(F32) >= 2.0 ** -125) & (POSITIVE_BF16.astype(F32) < 2.0 ** 126)]
    lowprec = np.asarray(jax.jit(lambda x: pow2_bf16.scale(x, 6.0))(jnp.asarray(a.astype(F32))))
    np.testing.assert_array_equal(lowprec, F32(1) / port_sf(a))
    assert _DOUBLED.size > 100 and _ONE_DIV.size > 10  # the cases above are exercised
    # every bf16 quotient's log2 lies >= 10 fp32 ulps from the bf16 rounding midpoints around
    # it, so CUDA's log2f (within a few ulps) rounds to bf16 as numpy's does
    lg = np.log2(POSITIVE_BF16.astype(np.float64))
    lg = lg[lg != np.round(lg)]  # integers (powers of two) are exact
    b = lg.astype(F32).astype(BF16)
    bits = b.view(np.uint16)
    mids = [(b.astype(np.float64) + n.view(BF16).astype(np.float64)) / 2 for n in (bits + np.uint16(1), bits - np.uint16(1))]
    gap = np.minimum(*(np.abs(lg - m) for m in mids)) / np.spacing(np.abs(lg).astype(F32))
    assert gap.min() >= 10


def _weight_case(kind):
    if kind == "normal":
        return heavy(1, (24, 40))
    if kind == "student_t":
        return heavy(2, (24, 40), df=2)
    return tie_heavy(3, (SPECIAL_AMAX.size, 24), SPECIAL_AMAX).T  # (out, in): one amax per input channel


@functools.lru_cache
def _quantizers():
    return jax.jit(lambda w: R.fwd_weight(w)), jax.jit(lambda x: R.fwd_act(x))


@pytest.mark.parametrize("kind", ["normal", "student_t", "ties"])
def test_weight_quantizer_equals_the_code_per_input_channel(kind):
    w = _weight_case(kind)  # the (out, in) Megatron weight
    port, scaled = ref.quantize_simulate_fp4_in_bf16(w, "e2m1", channel_wise=True)
    lowprec = _quantizers()[0](jnp.asarray(w.T))  # lowprec's (in, out) kernel
    assert lowprec.dtype == jnp.bfloat16
    same_values(lowprec.T, port)
    if kind == "ties":  # the inputs sit on the kernel's thresholds and saturate past 6
        s = scaled.astype(F32)
        assert np.isin(np.abs(s), np.abs(ref.E2M1_MIDPOINTS)).mean() > 0.3 and (np.abs(s) > 6).any()


def _act_case(kind):
    if kind == "normal":
        return heavy(4, (2, 6, 100))
    if kind == "student_t":
        return heavy(5, (12, 256), df=1.5)
    # tie-heavy rows whose clamp is a no-op (the entries beyond each bound repeat it)
    x = tie_heavy(6, (SPECIAL_AMAX.size, 100), SPECIAL_AMAX).astype(F32)
    x.sort(axis=1)
    x[:, :2] = x[:, :1]  # 100 entries: the bounds are sorted entries 1 and 99
    return x.astype(BF16)


@pytest.mark.parametrize("kind", ["normal", "student_t", "ties"])
def test_activation_quantizer_equals_the_code_per_token_with_quantile_clipping(kind):
    x = _act_case(kind)
    port, _ = ref.quantize_simulate_fp4_in_bf16(x, "e2m1", token_wise=True, outlier_clip=True, clip_threshold=0.99)
    lowprec = _quantizers()[1](jnp.asarray(x))
    assert lowprec.shape == x.shape and lowprec.dtype == jnp.bfloat16
    same_values(lowprec, port)
    clipped = ref.quantile_clip(x.reshape(-1, x.shape[-1]), 0.99, token_wise=True)
    changed = (clipped != x.reshape(clipped.shape)).any()
    assert changed == (kind != "ties")  # random rows are clamped, the tie rows are not


@pytest.mark.parametrize("per, axis", [("token", 1), ("tensor", None)])
def test_occ_floor_bounds_are_the_codes_sorted_entries(per, axis):
    x = heavy(7, (5, 300), df=1.5)
    for alpha in (0.99, 0.999, 0.97):
        occ = lp.quant.OCC(alpha=alpha, per=per, index="floor", compensate=False)
        lowprec = np.asarray(occ_lib.clamp(jnp.asarray(x), occ)[0])
        port = ref.quantile_clip(x, alpha, token_wise=axis == 1)
        np.testing.assert_array_equal(lowprec.astype(F32), port.astype(F32))
    for n in (32, 100, 256, 4096, 5120):
        for alpha in (0.99, 0.999, 0.97):
            occ = lp.quant.OCC(alpha=alpha, index="floor")
            assert occ_lib.bound_indices(occ, n, n) == (int((1 - alpha) * n), int(alpha * n))


def _dge_inputs():
    v = POSITIVE_BF16.astype(F32)
    v = v[v <= 7.5]
    extra = np.array([0.0, -6.5, -9.0, -1e4, 6.0078125, 6.5, 1e4], F32)
    return np.concatenate([v, -v, extra]).astype(BF16)


def test_dge_derivative_equals_the_kernel_to_fp32_rounding_and_its_bf16_output():
    x = _dge_inputs()
    d32, d16 = ref.dge_derivative(x, k=5.0, cap=3.0)
    xs = jnp.asarray(x.astype(F32))
    lp32 = np.asarray(jax.jit(lambda v: dge_derivative(v, E2M1, 5.0, 3.0, None, "msamp"))(xs))
    lp16 = np.asarray(jax.jit(lambda v: R.fwd_weight.estimator.derivative(v, E2M1))(xs))
    np.testing.assert_allclose(lp32, d32, rtol=4 * 2.0 ** -24, atol=0)
    assert (d32[x.astype(F32) > 6] == 0).all() and (d32[x.astype(F32) < -6] > 0).all()
    # bf16: equal but where the fp32 values lie within that tolerance of a bf16 rounding midpoint
    differ = lp16 != d16.astype(F32)
    mid_lo = ref.bf16(d32 * (1 - 4 * 2.0 ** -24)).astype(F32)
    mid_hi = ref.bf16(d32 * (1 + 4 * 2.0 ** -24)).astype(F32)
    assert not (differ & (mid_lo == mid_hi)).any()
    assert differ.sum() <= 2


def _exact_in_f32(a, b):
    """Whether every partial sum of ``a @ b`` (any order) is exact in fp32: per output, the sum
    of |products| is below 2**24 times the smallest power of two dividing them all."""
    p = np.asarray(a, np.float64)[:, :, None] * np.asarray(b, np.float64)[None, :, :]
    m, e = np.frexp(p)
    sig = (m * 2.0 ** 53).astype(np.int64)
    lsb = np.where(sig != 0, (sig & -sig).astype(np.float64) * 2.0 ** (e - 53.0), np.inf)
    return bool((np.abs(p).sum(axis=1) < 2.0 ** 24 * lsb.min(axis=1)).all())


def test_quant_dense_forward_and_backward_equal_the_megatron_hook():
    x = heavy(8, (2, 6, 100), df=3)
    w = heavy(9, (24, 100))  # (out, in)
    g = (np.random.default_rng(10).uniform(0.25, 1.0, (2, 6, 24)) * np.random.default_rng(11).choice(
        [-1, 1], (2, 6, 24)) * 1e-3).astype(F32).astype(BF16)
    port = ref.linear(x.reshape(-1, 100), w, g.reshape(-1, 24))
    assert _exact_in_f32(port["xq"], port["wq"].T) and _exact_in_f32(port["gq"], port["wq"])
    assert _exact_in_f32(port["gq"].T, port["xq"])  # so fp32 accumulation is exact in any order

    layer = lp.nn.QuantDense(100, 24, use_bias=False, dtype=jnp.bfloat16, recipe="fp4_msamp", rngs=nnx.Rngs(0))
    layer.kernel[...] = jnp.asarray(w.T.astype(F32))
    graphdef, state = nnx.split(layer)

    @jax.jit
    def run(params, xin):
        def loss(params, xin):
            y = nnx.merge(graphdef, params)(xin)
            return jnp.sum(y.astype(jnp.float32) * jnp.asarray(g.astype(F32))), y
        (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xin)
        return y, grads

    y, (dparams, dx) = run(state, jnp.asarray(x))
    dkernel = dparams["kernel"][...]
    same_values(np.asarray(y).reshape(-1, 24), port["y"])
    same_values(np.asarray(dx).reshape(-1, 100), port["dx"])
    # the weight gradient: lowprec multiplies the fp32 GEMM result by f' and rounds once; the
    # hook rounds the GEMM result to bf16 first (both bf16 out): equal up to that rounding
    dw = np.asarray(dkernel).T
    lowprec_order = ref.bf16(port["G"].astype(F32) * port["dge"].astype(F32)).astype(F32)
    np.testing.assert_array_equal(dw, lowprec_order)
    official = port["dw"].astype(F32)
    ulp = np.spacing(np.abs(official).astype(BF16)).astype(F32)
    assert (np.abs(dw - official) <= ulp).all() and (dw == official).mean() > 0.95
    assert (port["dge"].astype(F32) != 0.2).mean() > 0.5  # DGE is not a constant here


def test_fp4_msamp_is_registered_with_the_codes_choices():
    r = recipes.get("fp4_msamp")
    assert r is R and r.name == "fp4_msamp" and "\n" not in str(r)
    w, a = r.fwd_weight, r.fwd_act
    assert (w.format.name, a.format.name) == ("e2m1fn", "e2m1fn")
    assert w.granularity == lp.quant.Granularity.parse("tile(1,-1)") and str(a.granularity) == "token"
    assert {w.scale, a.scale} == {"pow2_ceil_bf16"} and {w.rounding, a.rounding} == {"nearest_up"}
    assert w.estimator == lp.quant.dge(k=5, dtype="bfloat16", outside="msamp") and str(a.estimator) == "ste"
    assert a.occ == lp.quant.OCC(alpha=0.99, per="token", compensate=False, index="floor") and w.occ is None
    assert r.reuse_forward and r.compute_dtype == "bfloat16"
    for q in (r.dgrad_grad, r.wgrad_grad):
        assert q.format.name == "e5m2" and str(q.granularity) == "tensor"


def test_nearest_up_sends_ties_toward_plus_infinity_on_grids_and_codebooks():
    ties = jnp.asarray([-5.0, -2.5, -1.25, -0.25, 0.25, 1.25, 2.5, 5.0, -0.3, 0.7])
    port = ref.quantize_e2m1_kernel(np.asarray(ties, F32)).astype(F32)
    np.testing.assert_array_equal(np.asarray(E2M1.quantize(ties, "nearest_up")) + 0.0, port)
    book = get("codebook(-2,-1,0,1,2)")
    np.testing.assert_array_equal(np.asarray(book.quantize(jnp.asarray([-1.5, -0.5, 0.5, 1.5, 0.4]), "nearest_up")),
                                  [-1.0, 0.0, 1.0, 2.0, 0.0])
