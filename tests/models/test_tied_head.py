"""A tied LM head (``tie_embeddings=True``) is a quantized layer named ``lm_head``: the numbers of
an untied model whose head kernel is the embedding table transposed, recipes included, with the
logits scaled by d_model^-0.5."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lowprec as lp
from lowprec.models import llama

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16)), jnp.int32)


def _pair(recipe):
    """(tied model, untied model with the same weights and head kernel = table.T), ``recipe`` everywhere."""
    tied = llama.Llama(llama.config_for("tiny", tie_embeddings=True), nnx.Rngs(0))
    untied = llama.Llama(llama.config_for("tiny"), nnx.Rngs(0))
    _, tied_params, _ = nnx.split(tied, nnx.Param, ...)
    nnx.update(untied, tied_params)  # embedding, blocks, final norm: the tied model's
    untied.lm_head.kernel.set_value(tied.embed.embedding.get_value().T)
    for m in (tied, untied):
        lp.nn.assign_recipes(m, [(".*", recipe)])
    return tied, untied


@pytest.mark.parametrize("recipe", ["none", "bf16", "fp4_paper"])
def test_tied_head_equals_untied_head_with_the_transposed_table(recipe):
    tied, untied = _pair(recipe)
    assert isinstance(tied.lm_head, lp.nn.QuantAttend) and str(tied.lm_head.recipe) == str(untied.lm_head.recipe)
    scale = tied.cfg.d_model ** -0.5
    forward = nnx.jit(lambda m: m(TOKENS))
    np.testing.assert_array_equal(forward(tied), forward(untied) * scale)

    def loss(m, scale):
        return llama.cross_entropy(m(TOKENS[:, :-1]) * scale, TOKENS[:, 1:])

    grad = nnx.jit(nnx.grad(loss))
    g_tied = grad(tied, 1.0)
    g_untied = grad(untied, scale)
    # the tied table's gradient is the lookup's plus the head's (transposed)
    want = g_untied["embed"]["embedding"].get_value() + g_untied["lm_head"]["kernel"].get_value().T
    np.testing.assert_allclose(g_tied["embed"]["embedding"].get_value(), want, rtol=1e-5, atol=1e-7)
    if recipe == "fp4_paper":  # quantized: not what the unquantized head computes
        plain, _ = _pair("none")
        lp.nn.assign_recipes(plain, [("lm_head", "none"), (".*", recipe)])
        assert float(jnp.abs(forward(plain) - forward(tied)).max()) > 1e-3


def test_rules_reach_the_tied_head_by_its_path():
    tied = llama.Llama(llama.config_for("tiny", tie_embeddings=True), nnx.Rngs(0))
    assigned = lp.nn.assign_recipes(tied, [("lm_head", "bf16"), (".*", "fp8")])
    assert assigned["lm_head"] == "bf16" and set(assigned.values()) == {"bf16", "fp8"}
    assert not jax.tree.leaves(nnx.state(tied.lm_head, nnx.Param))  # the table is the embedding's alone


def test_the_tied_head_starts_like_the_untied_one():
    """At initialization both heads give logits of about unit spread over the vocabulary (the
    tied table alone, N(0, 1) for the lookup, would give sqrt(d_model) = 8 here)."""
    for tie in (True, False):
        model = llama.Llama(llama.config_for("tiny", tie_embeddings=tie), nnx.Rngs(0))
        spread = float(jnp.median(jnp.std(model(TOKENS), axis=-1)))
        assert 0.5 < spread < 2.0, (tie, spread)
