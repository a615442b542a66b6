"""QLoRA's base in bitsandbytes' own NF4 (``"nf4_qlora"``): stored as bitsandbytes stores it and
dequantized to exactly its values (tests/fixtures/nf4_qlora_bnb.npz, made with bitsandbytes by
scripts/make_nf4_fixture.py), for plain and stacked kernels, eagerly and under jit; adapters,
merging and requantizing over it."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lowprec as lp
from lowprec.nn import LoRADense, QuantDense, QuantizedDense, QuantizedWeight
from lowprec.quant import nf4_qlora, presets

FIX = np.load(pathlib.Path(__file__).parents[1] / "fixtures" / "nf4_qlora_bnb.npz")
# A fixture case read as a torch weight (out, in), the layout bitsandbytes flattened.
CASES = [("matrix_bf16", (96, 40)), ("heavy_f32", (30, 100)), ("heavy_bf16", (60, 50)),
         ("normal_f32", (113, 149)), ("ramp_f32", (10, 64)), ("zeros_f32", (12, 19))]
X = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64)), jnp.float32)


def torch_weight(case, shape):
    xb = FIX[case + "/x"]
    dtype = jnp.bfloat16 if xb.dtype == np.uint16 else jnp.float32
    return jnp.asarray(xb.reshape(shape)).view(dtype)


def dense_holding(kernel):
    """A QuantDense whose kernel (in, out) is ``kernel``."""
    n_in, n_out = kernel.shape[-2:]
    return QuantDense(n_in, n_out, use_bias=False, dtype=kernel.dtype, param_dtype=kernel.dtype,
                      kernel_init=lambda *_: kernel, rngs=nnx.Rngs(0))


def as_fixture(torch_layout):
    """Values of a torch-layout weight as the fixture's raw bits, flattened."""
    a = np.asarray(torch_layout)
    return a.reshape(-1).view(np.uint16 if a.dtype == jnp.bfloat16 else np.uint32)


@pytest.mark.parametrize("case, shape", CASES)
def test_base_dequantizes_to_bitsandbytes_values(case, shape):
    w = torch_weight(case, shape)
    layer = QuantizedDense(dense_holding(w.T), "nf4_qlora")  # a Flax kernel is (in, out)
    # Stored as bitsandbytes stores it: packed codes, 8-bit absmax codes, the offset, absmax2.
    np.testing.assert_array_equal(layer.codes[...], FIX[case + "/codes"])
    absmax_codes, offset, absmax2 = (s[...] for s in layer.scales)
    assert absmax_codes.dtype == jnp.uint8 and absmax2.dtype == offset.dtype == jnp.float32
    np.testing.assert_array_equal(absmax_codes, FIX[case + "/absmax_codes"])
    np.testing.assert_array_equal(np.asarray(offset).view(np.uint32), FIX[case + "/offset"].view(np.uint32)[0])
    np.testing.assert_array_equal(np.asarray(absmax2).view(np.uint32), FIX[case + "/absmax2"].view(np.uint32))
    want = FIX[case + "/y"].reshape(-1)
    eager = layer.dequantized_kernel()
    assert eager.shape == w.T.shape and eager.dtype == w.dtype
    np.testing.assert_array_equal(as_fixture(eager.T), want)
    # Under jit too (XLA would otherwise fuse the absmax's multiply and add into one rounding).
    np.testing.assert_array_equal(as_fixture(jax.jit(lambda m: m.dequantized_kernel())(layer).T), want)


def test_stacked_kernel_is_quantized_layer_by_layer():
    w = torch_weight("ramp_f32", (10, 64))
    other = jnp.asarray(np.random.default_rng(1).standard_normal((10, 64)) * 3, jnp.float32)
    kernel = jnp.stack([w.T, other.T])  # (n_layers, in, out)
    layer = QuantizedDense(dense_holding(w.T), "nf4_qlora", kernel=kernel)
    deq = layer.dequantized_kernel()
    assert deq.shape == kernel.shape and layer.scales[1][...].shape == (2,)  # one offset a layer
    np.testing.assert_array_equal(as_fixture(deq[0].T), FIX["ramp_f32/y"])
    np.testing.assert_array_equal(deq[1].T, nf4_qlora.dequantize(*nf4_qlora.quantize(other), other.shape, other.dtype))


def test_weight_quantizer_names_the_bitsandbytes_scheme():
    q = lp.nn.weight_quantizer("nf4_qlora")
    assert q == presets.NF4_QLORA.along(0) and lp.nn.weight_quantizer(presets.NF4_QLORA) == q
    assert q != lp.nn.weight_quantizer("nf4")  # lowprec's own NF4 is another scheme
    with pytest.raises(ValueError, match="unknown weight format 'nf4_qlor'; known: .*nf4, nf4_qlora"):
        lp.nn.weight_quantizer("nf4_qlor")


class Stack(nnx.Module):
    """Two pairs of layers stacked by nnx.vmap and run by nnx.scan, as llama.py does."""

    def __init__(self):
        @nnx.split_rngs(splits=2)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(r):
            return Pair(r)

        self.blocks = make(nnx.Rngs(0))

    def __call__(self, x):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def run(block, h):
            return block(h)

        return run(self.blocks, x)


class Pair(nnx.Module):
    def __init__(self, rngs):
        self.up = QuantDense(64, 128, use_bias=False, rngs=rngs)
        self.down = QuantDense(128, 64, use_bias=False, rngs=rngs)

    def __call__(self, x):
        return x + self.down(jnp.tanh(self.up(x)))


def plain_with(model, kernels):
    """A fresh Stack holding ``kernels`` (name -> stacked kernel)."""
    plain = Stack()
    for name, k in kernels.items():
        getattr(plain.blocks, name).kernel[...] = k
    return plain


def per_layer(fn, kernel):
    return jnp.stack([fn(k) for k in kernel])


def bnb_round(k):
    """A kernel (in, out) rounded as bitsandbytes rounds its torch weight k.T."""
    t = k.T
    return nf4_qlora.dequantize(*nf4_qlora.quantize(t), t.shape, t.dtype).T


def test_a_large_weight_takes_4_127_bits():
    qt = jax.eval_shape(presets.NF4_QLORA.quantize, jax.ShapeDtypeStruct((4096, 4096), jnp.bfloat16))
    # 4-bit codes, an 8-bit absmax code per 64 weights, an fp32 absmax2 per 256 blocks, an offset
    assert round(8 * qt.nbytes() / 4096 ** 2, 3) == 4.127


def test_qlora_model_over_nf4_qlora_starts_equal_to_its_base():
    model = Stack()
    kernels = {name: getattr(model.blocks, name).kernel[...] for name in ("up", "down")}
    lp.nn.apply_lora(model, "up|down", 4, 8.0, base="nf4_qlora", rngs=nnx.Rngs(1))
    for name, kernel in kernels.items():
        base = getattr(model.blocks, name).base
        assert isinstance(base, QuantizedDense) and base.quantizer == lp.nn.weight_quantizer("nf4_qlora")
        np.testing.assert_array_equal(base.dequantized_kernel(), per_layer(bnb_round, kernel))
        n_layers, n = kernel.shape[0], kernel[0].size
        blocks = n // 64
        assert base.nbytes() == n_layers * (n // 2 + blocks + 4 * math.ceil(blocks / 256) + 4)
        stored = sum(v[...].nbytes for _, v in nnx.to_flat_state(nnx.state(base, QuantizedWeight)))
        assert stored == base.nbytes()
    # B = 0: the adapted model is its dequantized base.
    rounded = plain_with(model, {name: per_layer(bnb_round, k) for name, k in kernels.items()})
    np.testing.assert_array_equal(model(X), rounded(X))
    assert np.abs(np.asarray(model(X)) - np.asarray(plain_with(model, kernels)(X))).max() > 1e-3  # NF4 acts


def test_merge_requantizes_into_nf4_qlora():
    model = Stack()
    lp.nn.apply_lora(model, "up|down", 4, 8.0, base="nf4_qlora", rngs=nnx.Rngs(1))
    keys = iter(jax.random.split(jax.random.key(2), 8))
    for _, m in nnx.iter_modules(model):
        if isinstance(m, LoRADense):
            m.lora_b[...] = jax.random.normal(next(keys), m.lora_b.shape) * 0.05
    deployed = lp.nn.merge_lora(model, requantize=True)
    merged = {}
    for name in ("up", "down"):
        layer, out = getattr(model.blocks, name), getattr(deployed.blocks, name)
        merged[name] = layer.merged_kernel()
        assert isinstance(out, QuantizedDense) and out.quantizer == layer.base.quantizer
        want = per_layer(bnb_round, merged[name])
        np.testing.assert_array_equal(out.dequantized_kernel(), want)  # one bitsandbytes rounding
        assert np.abs(np.asarray(want) - np.asarray(layer.base.dequantized_kernel())).max() > 1e-3
    rounded = plain_with(model, {n: per_layer(bnb_round, k) for n, k in merged.items()})
    np.testing.assert_allclose(deployed(X), rounded(X), rtol=1e-6, atol=1e-6)


def test_ptq_rounds_to_nf4_qlora_by_rtn_only():
    from lowprec import ptq

    assert ptq.Spec(weights="nf4_qlora").weights == "nf4_qlora"
    with pytest.raises(ValueError, match="'nf4_qlora' .* take method rtn only"):
        ptq.Spec(weights="nf4_qlora", method="gptq")
    model = Stack()
    kernel = model.blocks.up.kernel[...]
    quantized, report = ptq.quantize_model(model, ptq.Spec(weights="nf4_qlora", targets="up"))
    np.testing.assert_array_equal(quantized.blocks.up.dequantized_kernel(), per_layer(bnb_round, kernel))
    assert set(report) == {"blocks/up"}


def test_qat_and_eval_quantized_fake_quantize_nf4_qlora_through_lowprecs_nf4():
    from lowprec.train import finetune

    assert finetune.DEFAULTS["base_format"] == "nf4_qlora"
    recipe = finetune.weight_only_recipe("nf4_qlora", "dge")
    assert recipe.fwd_weight == lp.nn.weight_quantizer("nf4").replace(estimator=lp.quant.get_estimator("dge"))
    assert recipe.name == "weights:nf4+dge"
