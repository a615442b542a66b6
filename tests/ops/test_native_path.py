"""The native FP8 path: which operands qualify, which devices, and what the compiled HLO runs."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowprec as lp
from lowprec import ops
from lowprec.ops import dot_general, native, recipes

DN = (((1,), (0,)), ((), ()))
H100 = types.SimpleNamespace(platform="gpu", compute_capability="9.0", device_kind="NVIDIA H100 80GB HBM3")
A100 = types.SimpleNamespace(platform="gpu", compute_capability="8.0", device_kind="NVIDIA A100-SXM4-80GB")
CPU = types.SimpleNamespace(platform="cpu", device_kind="cpu")

GPU_HLO = """
ENTRY %main {
  %p0 = f8e4m3fn[64,32]{1,0} parameter(0)
  %p1 = f8e4m3fn[16,32]{1,0} parameter(1)
  %s = f32[] parameter(2)
  %custom-call.3 = (bf16[64,16]{1,0}, s8[4194304]{0}) custom-call(%p0, %p1, %s, %s, %s, %s), custom_call_target="__cublas$lt$matmul$f8"
  %q = bf16[64,32]{1,0} parameter(3)
  %r = bf16[16,32]{1,0} parameter(4)
  %custom-call.4 = (bf16[64,16]{1,0}, s8[4194304]{0}) custom-call(bf16[64,32]{1,0} %q, bf16[16,32]{1,0} %r), custom_call_target="__cublas$gemm"
  %gemm_fusion = bf16[64,16]{1,0} fusion(%p0, %r), kind=kCustom, calls=%fc, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
}
"""


def test_formats_that_fp8_holds_exactly():
    fp8 = {name: native.fp8_dtype_for(lp.formats.get(name)) for name in
           ("e4m3fn", "e5m2", "e2m1fn", "e3m2fn", "e2m3fn", "int4", "int8", "nf4", "bf16")}
    assert fp8 == {"e4m3fn": "float8_e4m3fn", "e5m2": "float8_e5m2", "e2m1fn": "float8_e4m3fn",
                   "e3m2fn": "float8_e4m3fn", "e2m3fn": "float8_e4m3fn", "int4": "float8_e4m3fn",
                   "int8": None, "nf4": None, "bf16": None}


def test_devices_with_fp8_tensor_cores():
    assert native.device_has_fp8(H100) and not native.device_has_fp8(A100) and not native.device_has_fp8(CPU)
    if jax.devices()[0].platform == "cpu":
        assert not native.device_has_fp8()  # the CPU test devices


@pytest.mark.parametrize("dtypes,mode,device,path", [
    ((jnp.float8_e4m3fn, jnp.float8_e4m3fn), "auto", H100, "native_fp8"),
    ((jnp.float8_e5m2, jnp.float8_e4m3fn), "auto", H100, "native_fp8"),
    ((jnp.float8_e5m2, jnp.float8_e5m2), "auto", H100, "simulated"),
    ((jnp.float8_e4m3fn, jnp.bfloat16), "auto", H100, "simulated"),
    ((jnp.float8_e4m3fn, jnp.float8_e4m3fn), "auto", A100, "simulated"),
    ((jnp.float8_e4m3fn, jnp.float8_e4m3fn), "off", H100, "simulated"),
    ((jnp.float8_e4m3fn, jnp.float8_e4m3fn), "on", CPU, "native_fp8"),
])
def test_path_choice(dtypes, mode, device, path):
    assert native.choose(*dtypes, mode, device)[0] == path


def test_hlo_inspection_finds_the_cublaslt_fp8_gemm():
    gemms = native.parse_gemms(GPU_HLO)
    assert [kind for kind, _ in gemms] == ["__cublas$lt$matmul$f8", "__cublas$gemm", "triton_gemm"]
    assert gemms[0][1][:2] == ("f8e4m3fn", "f8e4m3fn") and gemms[1][1] == ("bf16", "bf16")
    assert gemms[2][1] == ("f8e4m3fn", "bf16")


def test_on_cpu_the_helpers_report_simulated():
    x, w = jnp.ones((16, 32)), jnp.ones((32, 8))
    f = jax.grad(lambda a, b: jnp.sum(dot_general(a, b, DN, recipes.fp8) ** 2), (0, 1))
    assert ops.fp8_path(f, x, w) == "simulated"
    assert ops.gemm_targets(f, x, w)["dot"] == 3


@pytest.mark.parametrize("name", ["fp8", "w4a4", "fp4_paper"])
def test_native_pattern_computes_what_the_simulation_computes(name, rand):
    """The FP8 pattern (forced on CPU, where XLA upcasts it) equals the simulated path."""
    x, w, g = rand(0, (2, 8, 32), jnp.bfloat16), rand(1, (32, 16), jnp.bfloat16), rand(2, (2, 8, 16), jnp.bfloat16)
    dn = (((2,), (0,)), ((), ()))
    out = {}
    for mode in ("on", "off"):
        recipe = recipes.get(name).replace(native_fp8=mode)

        def run(x, w, g):
            y, vjp = jax.vjp(lambda a, b: dot_general(a, b, dn, recipe), x, w)
            return (y,) + vjp(g)

        out[mode] = jax.jit(run)(x, w, g)
    for a, b in zip(out["on"], out["off"]):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-2, atol=1e-2)


def test_separate_fp8_transposes_change_the_program_not_the_bits(rand):
    """Recipe(fp8_transposes="separate"): an optimization barrier before each FP8 operand that
    needs a transpose for the NT layout (the weight forward, both operands of the weight
    gradient); the same bits as "fused"."""
    x, w, g = rand(0, (64, 32), jnp.bfloat16), rand(1, (32, 48), jnp.bfloat16), rand(2, (64, 48), jnp.bfloat16)

    def step(recipe):
        def run(x, w, g):
            y, vjp = jax.vjp(lambda a, b: dot_general(a, b, DN, recipe), x, w)
            return (y,) + vjp(g)
        return jax.jit(run)

    fused = step(recipes.fp8.replace(native_fp8="on", fp8_transposes="fused"))
    separate = step(recipes.fp8.replace(native_fp8="on", fp8_transposes="separate"))
    barriers = {k: f.lower(x, w, g).as_text().count("optimization_barrier") for k, f in
                (("fused", fused), ("separate", separate))}
    assert barriers["separate"] == barriers["fused"] + 3  # (scaling keeps barriers of its own)
    for a, b in zip(fused(x, w, g), separate(x, w, g), strict=True):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16))
    assert "fp8_transposes=separate" in str(recipes.fp8.replace(fp8_transposes="separate"))
    with pytest.raises(ValueError, match="unknown Recipe.fp8_transposes 'eager'; known: auto, fused, separate, pallas"):
        recipes.fp8.replace(fp8_transposes="eager")


def test_native_pattern_feeds_fp8_operands_to_nt_dots():
    """What XLA rewrites into cuBLASLt's FP8 GEMM on Hopper: dots of float8 operands that both
    contract their last dim, here for the forward and both backward GEMMs of the fp8 recipe."""
    x, w, g = jnp.ones((16, 32), jnp.bfloat16), jnp.ones((32, 8), jnp.bfloat16), jnp.ones((16, 8), jnp.bfloat16)
    recipe = recipes.fp8.replace(native_fp8="on")

    def step(x, w, g):
        y, vjp = jax.vjp(lambda a, b: dot_general(a, b, DN, recipe), x, w)
        return y, vjp(g)

    dots = [line for line in jax.jit(step).lower(x, w, g).as_text().splitlines() if "dot_general" in line]
    assert len(dots) == 3
    for line in dots:
        assert "contracting_dims = [1] x [1]" in line and line.count("xf8E") == 2 and "-> tensor<" in line


def test_cast_dtype_only_for_formats_that_are_an_fp8_dtype():
    assert native.cast_dtype_for(lp.formats.get("e4m3fn")) == "float8_e4m3fn"
    assert native.cast_dtype_for(lp.formats.get("e5m2")) == "float8_e5m2"
    for name in ("e2m1fn", "e3m2fn", "e4m3fnuz", "int4", "nf4"):  # held exactly in E4M3, but a coarser grid
        assert native.cast_dtype_for(lp.formats.get(name)) is None


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2"])
@pytest.mark.parametrize("scale", [dict(scale="pow2_ceil"), dict(source="fixed", fixed_scale=1.0),
                                   dict(source="fixed", fixed_scale=2.0 ** -7)])
def test_operand_cast_equals_format_rounding_on_every_bf16_pattern(fmt, scale):
    """The operand of an FP8 GEMM is a saturating convert; it must round as the format does
    (subnormals, ties, saturation, infinities, with the scale that brings them into range)."""
    from lowprec.ops import operand
    x = jnp.asarray(np.arange(65536, dtype=np.uint16).view(jnp.bfloat16)).reshape(256, 256)
    if "source" not in scale:  # a NaN would set the tensor scale to NaN
        x = jnp.where(jnp.isnan(x), 0.0, x).astype(jnp.bfloat16)
    q = lp.Quantizer(format=fmt, granularity="tensor", **scale)
    op, s = jax.jit(lambda v: operand.quantize(v, q, (1,), None, jnp.bfloat16))(x)
    assert op.values.dtype == native.FP8_DTYPES[native.cast_dtype_for(q.format)]
    ref = q.format.quantize(x.astype(jnp.float32) / s, "nearest_even", overflow="saturate")
    got = np.asarray(op.values.astype(jnp.float32))
    np.testing.assert_array_equal(got.view(np.uint32)[~np.isnan(got)], np.asarray(ref).view(np.uint32)[~np.isnan(got)])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(np.asarray(ref)))
    np.testing.assert_array_equal(np.asarray(op.dequantize()), np.asarray(q(x).astype(jnp.float32)))


def _fp8_converts(jaxpr) -> list[str]:
    """convert_element_type equations whose operand is an FP8 array, in ``jaxpr`` and its sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "convert_element_type" and eqn.invars[0].aval.dtype.name in native.FP8_DTYPES:
            found.append(f"{eqn.invars[0].aval.dtype} -> {eqn.params['new_dtype']}")
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _fp8_converts(inner)
    return found


@pytest.mark.parametrize("recipe", ["fp8", "w4a4", "fp4_paper", "w8a4", "mxfp8"])
def test_fp8_values_are_never_widened_by_a_convert(recipe):
    """XLA:GPU removes float convert chains (f32 -> f8 -> f32 becomes f32: excess precision), so
    a quantizing cast would be undone wherever FP8 values are widened by a convert; they must be
    decoded from their bits (native.widen) or go straight into an FP8 GEMM."""
    x = jax.random.normal(jax.random.key(0), (32, 64), jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (64, 16), jnp.bfloat16)

    def loss(x, w):
        return jnp.sum(dot_general(x, w, DN, recipe).astype(jnp.float32) ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w)
    assert _fp8_converts(jaxpr.jaxpr) == []
    # and the decoded values are the FP8 values, bit for bit (signed zeros, subnormals, inf, NaN)
    for dtype in native.FP8_DTYPES.values():
        v = jnp.asarray(np.arange(256, dtype=np.uint8)).view(dtype)
        got, want = np.asarray(native.widen(v, jnp.float32)), np.asarray(v.astype(jnp.float32))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(got.view(np.uint32)[~np.isnan(got)], want.view(np.uint32)[~np.isnan(want)])
