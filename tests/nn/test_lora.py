"""LoRA / QLoRA adapters: parameter counts, start equal to the base, gradients only to adapters,
packed quantized storage, merging (exact for a plain base, one rounding for a quantized one)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lowprec as lp
from lowprec.models import llama
from lowprec.nn import LoRADense, LoRAParam, QuantDense, QuantizedDense, QuantizedWeight, lora
from lowprec.quant import Quantizer, presets

TOKENS = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)


def tiny(dtype="bfloat16"):
    """The tiny LLaMA (2 stacked layers); fp32 compute where a test needs plain float arithmetic."""
    return llama.Llama(llama.config_for("tiny", dtype=dtype), nnx.Rngs(0))


class Pair(nnx.Module):
    def __init__(self, dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=False, dtype=dtype, rngs=rngs)
        self.up = QuantDense(64, 128, kernel_axes=("embed", "mlp"), **kw)
        self.down = QuantDense(128, 64, kernel_axes=("mlp", "embed"), **kw)

    def __call__(self, x):
        return x + self.down(jnp.tanh(self.up(x)))


class Stack(nnx.Module):
    """Three layers stacked as llama.py stacks its blocks (nnx.vmap at init, nnx.scan in the
    forward), small enough to compile in a moment."""

    def __init__(self, dtype=jnp.float32):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make(r):
            return Pair(dtype, r)

        self.blocks = make(nnx.Rngs(0))

    def __call__(self, x_BxD, key=None):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def run(block, x):
            return block(x)

        return run(self.blocks, x_BxD)


X = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64)), jnp.float32)


def expected_adapter_count(mcfg, rank: int, names: set[str]) -> int:
    """Independent arithmetic: rank * (in + out) for each named projection, times the layers."""
    d, f, hd = mcfg.d_model, mcfg.d_ff, mcfg.head_dim
    shapes = {"q": (d, mcfg.n_heads * hd), "k": (d, mcfg.n_kv_heads * hd), "v": (d, mcfg.n_kv_heads * hd),
              "o": (mcfg.n_heads * hd, d), "gate": (d, f), "up": (d, f), "down": (f, d)}
    return mcfg.n_layers * sum(rank * (shapes[n][0] + shapes[n][1]) for n in names)


def randomize_adapters(model, seed=2, scale=0.05):
    """Nonzero B (and fresh A) in every adapter, as after some training."""
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    for _, m in nnx.iter_modules(model):
        if isinstance(m, LoRADense):
            m.lora_a[...] = jax.random.normal(next(keys), m.lora_a.shape) * scale
            m.lora_b[...] = jax.random.normal(next(keys), m.lora_b.shape) * scale


@pytest.mark.parametrize("rank, targets, names", [
    (1, "attn|mlp", {"q", "k", "v", "o", "gate", "up", "down"}),
    (4, "attn|mlp", {"q", "k", "v", "o", "gate", "up", "down"}),
    (8, "attn/(q|v)$", {"q", "v"}),
    (3, "mlp/down", {"down"}),
])
def test_trainable_parameter_count_is_exact(rank, targets, names):
    model = tiny()
    paths = lp.nn.apply_lora(model, targets, rank, 2.0 * rank, rngs=nnx.Rngs(1))
    assert {p.split("/")[-1] for p in paths} == names
    want = expected_adapter_count(model.cfg, rank, names)
    assert lp.nn.count_params(model) == want
    _, adapters, base, _ = nnx.split(model, LoRAParam, nnx.Param, ...)
    assert sum(x.size for x in jax.tree.leaves(adapters)) == want
    assert sum(x.size for x in jax.tree.leaves(base)) == model.cfg.num_params()  # the base is all still there


def without_adapters(model):
    """A copy of an adapted model with each LoRADense replaced by its base layer."""
    bare = nnx.clone(model)
    for path, m in list(nnx.iter_modules(bare)):
        if isinstance(m, LoRADense):
            parent = bare
            for p in path[:-1]:
                parent = getattr(parent, p)
            setattr(parent, path[-1], m.base)
    return bare


# fp32 compute where outputs are compared bit for bit: in bf16, XLA may keep a fused producer's
# excess precision or not depending on its consumers (here, the adapter's "+ 0").
def test_adapted_llama_starts_equal_to_its_base():
    model = tiny(dtype="float32")
    before = model(TOKENS)
    lp.nn.apply_lora(model, "attn|mlp", 4, 8.0, rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(model(TOKENS), before)


def test_qlora_model_starts_equal_to_its_quantized_base():
    model = Stack()
    before = model(X)
    lp.nn.apply_lora(model, "up|down", 4, 8.0, base="nf4", rngs=nnx.Rngs(1))
    adapted = model(X)
    np.testing.assert_array_equal(adapted, without_adapters(model)(X))
    assert np.abs(np.asarray(adapted) - np.asarray(before)).max() > 1e-3  # NF4 acts


def test_lora_layer_matches_the_formula():
    """A plain (unstacked) layer against x W + b + (alpha/r) (x A) B in float64."""
    class Two(nnx.Module):
        def __init__(self):
            self.first = QuantDense(12, 20, rngs=nnx.Rngs(0), kernel_axes=None, bias_axes=None)
            self.second = QuantDense(20, 6, rngs=nnx.Rngs(1), kernel_axes=None, bias_axes=None)

        def __call__(self, x):
            return self.second(jnp.tanh(self.first(x)))

    model = Two()
    lp.nn.apply_lora(model, "second", 3, 1.5, rngs=nnx.Rngs(2))
    randomize_adapters(model, scale=0.3)
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    f, s = model.first, model.second
    h = np.tanh(x.astype(np.float64) @ np.asarray(f.kernel[...], np.float64) + np.asarray(f.bias[...], np.float64))
    a, b = np.asarray(s.lora_a[...], np.float64), np.asarray(s.lora_b[...], np.float64)
    want = h @ np.asarray(s.base.kernel[...], np.float64) + np.asarray(s.base.bias[...]) + 0.5 * (h @ a) @ b
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)  # fp32 arithmetic vs float64


def test_gradients_reach_only_adapters_and_the_base_stays_bit_identical():
    model = Stack()
    lp.nn.apply_lora(model, "up|down", 4, 8.0, rngs=nnx.Rngs(1))
    graphdef, adapters, frozen, rest = nnx.split(model, LoRAParam, nnx.Param, ...)
    before = jax.tree.map(np.asarray, frozen)

    def loss(adapters):
        return jnp.mean(jnp.sin(nnx.merge(graphdef, adapters, jax.tree.map(lambda x: x, frozen), rest)(X)))

    grads = jax.jit(jax.grad(loss))(adapters)
    assert jax.tree.structure(grads) == jax.tree.structure(adapters)
    for path, g in nnx.to_flat_state(grads):
        g = np.asarray(g[...])
        if path[-1] == "lora_a":  # B = 0: dL/dA = x^T (dL/dy) B^T vanishes exactly
            assert not g.any(), path
        else:
            assert np.abs(g).max() > 0, path
    tx = optax.adam(1e-2)
    updates, _ = tx.update(grads, tx.init(adapters), adapters)
    nnx.update(model, optax.apply_updates(adapters, updates))
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Not(LoRAParam))), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(np.abs(np.asarray(v[...])).max() > 0 for p, v in nnx.to_flat_state(nnx.state(model, LoRAParam))
               if p[-1] == "lora_b")


@pytest.mark.parametrize("fmt, groups_per_layer", [
    ("nf4", lambda n_in, n_out: n_in // 64 * n_out),   # one absmax per 64 inputs of each output
    ("int4", lambda n_in, n_out: n_out),               # one scale per output channel
    ("mxfp4", lambda n_in, n_out: n_in // 32 * n_out),  # one E8M0 scale per 32 inputs of each output
])
def test_qlora_base_is_stored_as_packed_codes(fmt, groups_per_layer):
    model = Stack()
    kernels = {name: getattr(model.blocks, name).kernel[...] for name in ("up", "down")}
    lp.nn.apply_lora(model, "up|down", 4, 8.0, base=fmt, rngs=nnx.Rngs(1))
    q = lp.nn.weight_quantizer(fmt)
    for name, kernel in kernels.items():
        base = getattr(model.blocks, name).base
        assert isinstance(base, QuantizedDense) and not hasattr(base, "kernel")
        n_layers, n_in, n_out = kernel.shape
        codes = base.codes[...]
        assert codes.dtype == jnp.uint8 and codes.size == n_layers * n_in * n_out // 2  # two 4-bit codes a byte
        groups = groups_per_layer(n_in, n_out)
        if fmt == "nf4":  # int8 double-quantized absmax in blocks of 256, an fp32 scale each, an fp32 mean
            blocks = math.ceil(groups / 256)
            scale_bytes = blocks * 256 + 4 * blocks + 4
        elif fmt == "mxfp4":  # power-of-two scales kept as their 8-bit E8M0 codes
            scale_bytes = groups
            assert base.scales[0][...].dtype == jnp.uint8
        else:
            scale_bytes = 4 * groups
        assert base.nbytes() == n_layers * (n_in * n_out // 2 + scale_bytes)
        stored = sum(v[...].nbytes for _, v in nnx.to_flat_state(nnx.state(base, QuantizedWeight)))
        assert stored == base.nbytes() < kernel.nbytes / 6
        # The codes are exactly the quantizer's, layer by layer.
        want = jax.jit(jax.vmap(lambda w: lp.formats.pack(q.quantize(w).codes, 4)))(kernel)
        np.testing.assert_array_equal(codes, want)
        # Values: the codes times scales; the double-quantized scales (a mean, a multiply-add)
        # may round an ulp apart between compiled programs, hence not bit for bit.
        np.testing.assert_allclose(base.dequantized_kernel(), jax.jit(jax.vmap(q))(kernel), rtol=1e-6, atol=1e-9)
        if fmt == "mxfp4":  # E8M0 codes hold the scales exactly
            np.testing.assert_array_equal(base.dequantized_kernel(), jax.jit(jax.vmap(q))(kernel))


def test_merge_reproduces_the_adapted_model():
    model = Stack()
    lp.nn.apply_lora(model, "up|down", 4, 8.0, rngs=nnx.Rngs(1))
    randomize_adapters(model)
    adapted = model(X)
    merged = lp.nn.merge_lora(model)
    assert lp.nn.count_params(merged) == 0 and not any(isinstance(m, LoRADense) for _, m in nnx.iter_modules(merged))
    shapes = lambda m: jax.tree.map(lambda x: (x.shape, x.dtype), nnx.state(m, nnx.Param))  # noqa: E731
    assert shapes(merged) == shapes(Stack())
    up = model.blocks.up
    a, b = np.asarray(up.lora_a[...], np.float64), np.asarray(up.lora_b[...], np.float64)
    want = np.asarray(up.base.kernel[...], np.float64) + 2.0 * np.einsum("lir,lro->lio", a, b)
    np.testing.assert_allclose(merged.blocks.up.kernel[...], want, rtol=1e-6, atol=1e-7)  # one fp32 rounding
    # x (W + s A B) against x W + s (x A) B: the same sums in another order, in fp32.
    np.testing.assert_allclose(merged(X), adapted, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(adapted) - np.asarray(Stack()(X))).max() > 1e-2  # the adapters do act


def test_merge_requantizes_a_qlora_model_with_one_rounding():
    model = Stack()
    lp.nn.apply_lora(model, "up|down", 4, 8.0, base="nf4", rngs=nnx.Rngs(1))
    randomize_adapters(model)
    adapted = model(X)
    deployed = lp.nn.merge_lora(model, requantize=True)
    plain = lp.nn.merge_lora(model)  # unquantized merge: the reference, rounded below
    q = lp.nn.weight_quantizer("nf4")
    for name in ("up", "down"):
        layer, out = getattr(model.blocks, name), getattr(deployed.blocks, name)
        merged_kernel = layer.base.dequantized_kernel() + 2.0 * jnp.matmul(
            layer.lora_a[...], layer.lora_b[...], precision=jax.lax.Precision.HIGHEST)
        assert isinstance(out, QuantizedDense) and out.quantizer == q
        np.testing.assert_array_equal(out.codes[...], jax.jit(jax.vmap(
            lambda w: lp.formats.pack(q.quantize(w).codes, 4)))(merged_kernel))
        dense = getattr(plain.blocks, name)
        dense.kernel[...] = jax.jit(jax.vmap(q))(dense.kernel[...])
    # The deployed model is the merged model with each merged kernel rounded once. Not bit for
    # bit: under jit the double-quantized scales' multiply-add may fuse into one FMA (an fp32 ulp).
    rounded = plain(X)
    np.testing.assert_allclose(deployed(X), rounded, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(rounded) - np.asarray(adapted)).max() > 1e-3  # the rounding is real


def test_merge_requantize_to_another_format_and_bad_requests():
    model = Stack()
    lp.nn.apply_lora(model, "up", 2, 4.0, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="needs a quantized base"):
        lp.nn.merge_lora(model, requantize=True)
    deployed = lp.nn.merge_lora(model, requantize="int8_channel")
    assert isinstance(deployed.blocks.up, QuantizedDense) and deployed.blocks.up.codes.dtype == jnp.uint8
    assert isinstance(deployed.blocks.down, QuantDense)  # untargeted layers are untouched
    assert isinstance(model.blocks.up, LoRADense)  # merge_lora copies; the adapted model stays


def test_dropout_needs_a_key_and_is_off_when_deterministic():
    def layer(dropout):
        adapted = LoRADense(QuantDense(64, 32, rngs=nnx.Rngs(0)), 4, 8.0, dropout=dropout, rngs=nnx.Rngs(1))
        adapted.lora_b[...] = jnp.ones_like(adapted.lora_b[...])
        return adapted

    with_dropout, without = layer(0.5), layer(0.0)
    with pytest.raises(ValueError, match="dropout needs key"):
        with_dropout(X)
    key = jax.random.key(0)
    dropped = with_dropout(X, key=key)
    lp.nn.set_deterministic(with_dropout, True)
    np.testing.assert_array_equal(with_dropout(X, key=key), without(X, key=key))
    # Dropout acts on the adapter's input only: rebuild its output from the mask it must have used.
    keep = jax.random.bernoulli(jax.random.fold_in(key, lora._DROPOUT_STREAM), 0.5, X.shape)
    h = np.asarray(X, np.float64) * np.asarray(keep) / 0.5
    a, b = np.asarray(with_dropout.lora_a[...], np.float64), np.asarray(with_dropout.lora_b[...], np.float64)
    base = np.asarray(X, np.float64) @ np.asarray(with_dropout.base.kernel[...], np.float64) + np.asarray(
        with_dropout.base.bias[...], np.float64)
    np.testing.assert_allclose(dropped, base + 2.0 * (h @ a) @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0), "rank must be a positive integer"),
    (dict(rank=2.5), "rank must be a positive integer"),
    (dict(alpha=-1.0), "alpha must be a positive number"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(targets="gate"), "match no QuantDense layer; layers: blocks/down, blocks/up"),
    (dict(targets="up("), "not a regular expression"),
    (dict(base="nf5"), "unknown weight format 'nf5'; known: .*nf4"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    args = dict(targets="up|down", rank=4, alpha=8.0, base=None) | kwargs
    with pytest.raises(ValueError, match=message):
        lp.nn.apply_lora(Stack(), args.pop("targets"), args.pop("rank"), args.pop("alpha"), rngs=nnx.Rngs(1), **args)


def test_adapting_twice_is_an_error():
    model = Stack()
    lp.nn.apply_lora(model, "up", 2, 4.0, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        lp.nn.apply_lora(model, "down", 2, 4.0, rngs=nnx.Rngs(1))


def test_weight_quantizer_runs_groups_along_the_inputs():
    assert lp.nn.weight_quantizer("nf4") == presets.NF4.replace(granularity="block(64,axis=0)")
    assert lp.nn.weight_quantizer("int4") == Quantizer("int4", "channel")
    assert lora.weight_quantizer(Quantizer("e2m1fn", "block(32)")).granularity.axes == (0,)
