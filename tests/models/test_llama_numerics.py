"""The decoder's embedding gradient is accumulated in fp32, the attention choice is explicit, and
RMSNorm and SwiGLU are recomputed in the backward pass instead of saving their intermediates."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

import lowprec as lp
from lowprec.models import llama


def _model():
    return llama.Llama(llama.config_for("tiny"), nnx.Rngs(0))


def test_embedding_gradient_is_an_fp32_scatter_add():
    model = _model()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 17)), jnp.int32)

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1])
        return llama.cross_entropy(logits, tokens[:, 1:])

    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
    adds = [line for line in jaxpr.splitlines() if "scatter-add" in line or "scatter_add" in line]
    assert adds and all("bf16" not in line.split("=")[0] for line in adds), adds


def test_attention_implementation_is_explicit():
    assert llama.attention_implementation("xla", jnp.bfloat16) == "xla"
    expected = "cudnn" if jax.default_backend() == "gpu" else "xla"
    assert llama.attention_implementation(None, jnp.bfloat16) == expected
    assert llama.attention_implementation(None, jnp.float32) == "xla"


def _saved(fn, *args) -> list[str]:
    """The residuals autodiff saves for ``fn``'s backward pass, one line each."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_saved_residuals(fn, *args)
    return buf.getvalue().splitlines()


def _plain(monkeypatch):
    """RMSNorm and SwiGLU without their rematerialization (what autodiff alone would save)."""
    monkeypatch.setattr(llama, "_swiglu", llama._swiglu.__wrapped__)
    monkeypatch.setattr(llama, "_rms_norm", llama._rms_norm.__wrapped__)


def test_a_block_saves_no_f32_norm_copies_and_three_fewer_mlp_tensors(monkeypatch):
    cfg = llama.config_for("tiny")  # d_model 64, d_ff 192
    graphdef, state = nnx.split(llama.Block(cfg, nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(0), (2, 32, 64), jnp.bfloat16)

    def loss(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x).astype(jnp.float32))

    def count(lines):
        return (sum(line.startswith("f32[2,32,64]") for line in lines),
                sum(line.startswith("bf16[2,32,192]") for line in lines))

    assert count(_saved(loss, state, x)) == (0, 3)  # gate, up and their product (the down projection's input)
    _plain(monkeypatch)
    assert count(_saved(loss, state, x)) == (4, 6)  # + each norm's f32 input and normalized values, silu's three


@pytest.mark.parametrize("recipe", ["bf16", "fp8"])
def test_rematerialization_changes_no_bits(recipe, monkeypatch):
    """Loss and gradients equal plain autodiff's, compiled without XLA's excess precision (with it,
    a recomputation may keep an f32 intermediate that the saved tensor had rounded to bf16)."""
    def loss_and_grads():
        model = _model()
        lp.nn.assign_recipes(model, [("lm_head", "bf16"), (".*", lp.recipes.get(recipe).replace(native_fp8="on"))])
        tokens = jax.random.randint(jax.random.key(1), (2, 33), 0, 256)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p):
            return jnp.mean(llama.cross_entropy(nnx.merge(graphdef, p, rest)(tokens[:, :-1]), tokens[:, 1:]))
        step = jax.jit(jax.value_and_grad(loss)).lower(params)
        return jax.tree.leaves(step.compile(compiler_options={"xla_allow_excess_precision": False})(params))

    got = loss_and_grads()
    _plain(monkeypatch)
    for a, b in zip(got, loss_and_grads(), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
