"""configs/recipes_bakeoff.py: every recipe it sweeps trains two steps on a tiny model without NaN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lowprec as lp
from configs import recipes_bakeoff
from lowprec.models import llama

# 64 tokens: mxfp4_tseng's 64-point Hadamard runs along the tokens of the weight-gradient GEMM
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 65)), jnp.int32)


def test_bakeoff_sweeps_every_field_recipe_and_the_baselines_with_paired_seeds():
    runs = recipes_bakeoff.get_sweep()
    names = {r["recipe"] for r in runs}
    assert set(recipes_bakeoff.FIELD) | {"bf16", "fp8", "fp4_paper"} <= names
    assert {(r["recipe"], r["seed"]) for r in runs} == {(n, s) for n in names for s in (0, 1)}
    c = recipes_bakeoff.get_config("mxfp4_tseng")
    assert c.data.source == "pypi_v1" and c.recipe == "mxfp4_tseng"


@pytest.mark.parametrize("recipe", recipes_bakeoff.RECIPES)
def test_every_bakeoff_recipe_takes_two_finite_training_steps(recipe):
    # every GEMM axis a multiple of 64 (mxfp4_tseng's Hadamard), as in the 20m model
    model = llama.Llama(llama.config_for("tiny", d_model=128, d_ff=256, n_heads=2, n_kv_heads=1), nnx.Rngs(0))
    lp.nn.assign_recipes(model, [(".*", recipe)])

    def loss(m, key):
        return llama.cross_entropy(m(TOKENS[:, :-1], key=key), TOKENS[:, 1:])

    @nnx.jit
    def two_steps(m):
        losses = []
        for i in range(2):
            value, grads = nnx.value_and_grad(loss)(m, jax.random.key(i))
            params = nnx.state(m, nnx.Param)
            nnx.update(m, jax.tree.map(lambda p, g: p - 0.05 * g, params, nnx.state(grads, nnx.Param)))
            losses.append(value)
        return jnp.stack(losses), grads

    losses, grads = two_steps(model)
    assert np.all(np.isfinite(np.asarray(losses)))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(nnx.state(grads, nnx.Param)))
