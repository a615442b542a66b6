"""Assign recipes to a model's quantized layers by path pattern, explicitly."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import Any

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
                module.sync_amax_history()
                used.add(pattern)
                break
        assigned[name] = module.recipe.name or str(module.recipe)
    for pattern, _, _ in compiled:
        if pattern not in used:
            logger.warning("recipe rule %r matched no quantized layer; layers: %s", pattern, ", ".join(assigned))
    return assigned


@dataclasses.dataclass(frozen=True)
class Layer:
    """A module found in a model: its path (``"blocks/attn/q"``), parent path and attribute."""

    path: str
    parent: tuple
    name: Any
    module: nnx.Module


def find_layers(model: nnx.Module, pattern: str, kinds, *, required: bool = True,
                what: str = "layer pattern") -> list[Layer]:
    """Every ``kinds`` module whose path matches the regular expression ``pattern`` (``re.search``).
    With ``required``, matching nothing is a ValueError that lists the layers there are
    (``what`` names the setting in the message)."""
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{what} {pattern!r} is not a regular expression: {e}") from None
    found, names = [], []
    for path, module in nnx.iter_modules(model):
        if isinstance(module, kinds) and path:
            name = "/".join(str(p) for p in path)
            names.append(name)
            if regex.search(name):
                found.append(Layer(name, tuple(path[:-1]), path[-1], module))
    if required and not found:
        kind_names = "/".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise ValueError(f"{what} {pattern!r} match no {kind_names} layer; layers: {', '.join(names)}")
    return found


def replace_layer(model: nnx.Module, layer: Layer, module: nnx.Module) -> None:
    """Puts ``module`` where ``layer`` was, in place."""
    parent = model
    for p in layer.parent:
        parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    if isinstance(layer.name, int):
        parent[layer.name] = module
    else:
        setattr(parent, layer.name, module)
