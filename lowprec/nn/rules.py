"""Assign recipes to a model's quantized layers by path pattern, explicitly."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from flax import nnx

from lowprec.nn.base import QuantModule
from lowprec.ops import Recipe, recipes

logger = logging.getLogger(__name__)


def assign_recipes(model: nnx.Module, rules: Sequence[tuple[str, Recipe | str]]) -> dict[str, str]:
    """Sets each quantized layer's ``recipe`` from the first rule whose regular expression
    matches (``re.search``) its path, the attribute names joined by ``/`` (``"blocks/0/mlp/up"``).

    ``rules`` are ``(pattern, recipe or name)`` pairs, e.g.
    ``[("lm_head|embed", "bf16"), (".*", "fp4_paper")]``. Layers no rule matches keep their
    recipe. Returns ``{path: recipe name}`` for every quantized layer (for logs and reports).
    """
    compiled = []
    for pattern, recipe in rules:
        try:
            compiled.append((pattern, re.compile(pattern), recipes.get(recipe)))
        except re.error as e:
            raise ValueError(f"rule pattern {pattern!r} is not a regular expression: {e}") from None
    used, assigned = set(), {}
    for path, module in nnx.iter_modules(model):
        if not isinstance(module, QuantModule):
            continue
        name = "/".join(str(p) for p in path)
        for pattern, regex, recipe in compiled:
            if regex.search(name):
                module.recipe = recipe
                used.add(pattern)
                break
        assigned[name] = module.recipe.name or str(module.recipe)
    for pattern, _, _ in compiled:
        if pattern not in used:
            logger.warning("recipe rule %r matched no quantized layer; layers: %s", pattern, ", ".join(assigned))
    return assigned
