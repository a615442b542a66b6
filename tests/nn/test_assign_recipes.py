"""assign_recipes: recipes per layer by path pattern, first match wins."""

import logging

import jax.numpy as jnp
import pytest
from flax import nnx

from lowprec.nn import QuantDense, assign_recipes
from lowprec.ops import recipes


class Block(nnx.Module):
    def __init__(self, rngs):
        self.up = QuantDense(8, 16, rngs=rngs)
        self.down = QuantDense(16, 8, rngs=rngs)


class Model(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(10, 8, rngs=rngs)
        self.blocks = nnx.List([Block(rngs), Block(rngs)])
        self.lm_head = QuantDense(8, 10, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens)
        for block in self.blocks:
            h = h + block.down(nnx.relu(block.up(h)))
        return self.lm_head(h)


def test_first_matching_rule_sets_each_layers_recipe():
    model = Model(nnx.Rngs(0))
    assigned = assign_recipes(model, [("lm_head|embed", "bf16"), (r"blocks/1/", "fp8"), (".*", "fp4_paper")])
    assert assigned == {"blocks/0/up": "fp4_paper", "blocks/0/down": "fp4_paper", "blocks/1/up": "fp8",
                        "blocks/1/down": "fp8", "lm_head": "bf16"}
    assert model.lm_head.recipe is recipes.bf16 and model.blocks[0].up.recipe is recipes.fp4_paper
    assert model(jnp.arange(4)).shape == (4, 10)


def test_unmatched_layers_keep_their_recipe_and_unused_rules_are_reported(caplog):
    model = Model(nnx.Rngs(0))
    with caplog.at_level(logging.WARNING):
        assigned = assign_recipes(model, [("up", recipes.fp8), ("attention", "bf16")])
    assert assigned["blocks/0/up"] == "fp8" and assigned["blocks/0/down"] == "none"
    assert "'attention' matched no quantized layer" in caplog.text


def test_rule_errors_name_the_problem():
    model = Model(nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown recipe 'fp3'; known: .*bf16"):
        assign_recipes(model, [(".*", "fp3")])
    with pytest.raises(ValueError, match="rule pattern '\\(' is not a regular expression"):
        assign_recipes(model, [("(", "bf16")])
