"""The decoder's embedding gradient is accumulated in fp32, and the attention choice is explicit."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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
