"""Assign recipes to a model's quantized layers by path pattern, explicitly."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import Any

from flax import nnx

from lowprec.nn.base import QuantModule, recipe_value
from lowprec.ops import Recipe, recipes
from lowprec.quant.execution import Execution

logger = logging.getLogger(__name__)


# A layer index after a path component: ``blocks[0]``, ``blocks[-2:]``, ``blocks[::2]/mlp`` (a
# bracket right after a name, before ``/`` or the end, holding an integer or containing ``:``).
_INDEX = re.compile(r"(?<=\w)\[([^\]]*)\](?=/|$)")
_INT = re.compile(r"\s*-?\d+\s*")


def _split_index(pattern: str):
    """(regex without the layer index, the index: an int, a slice, or None)."""
    found = [m for m in _INDEX.finditer(pattern) if ":" in m.group(1) or _INT.fullmatch(m.group(1))]
    if not found:
        return pattern, None
    if len(found) > 1:
        raise ValueError(f"recipe rule {pattern!r} has {len(found)} layer indices; at most one ([i] or [start:stop:step])")
    m = found[0]
    text = m.group(1)
    if _INT.fullmatch(text):
        index = int(text)
    else:
        parts = text.split(":")
        if len(parts) > 3 or not all(_INT.fullmatch(p) or not p.strip() for p in parts):
            raise ValueError(f"recipe rule {pattern!r}: layer index [{text}] is not an integer or a slice "
                             "[start:stop] / [start:stop:step] of integers")
        index = slice(*(int(p) if p.strip() else None for p in parts))
        if index.step == 0:
            raise ValueError(f"recipe rule {pattern!r}: layer slice [{text}] has step 0")
    return pattern[:m.start()] + pattern[m.end():], index


def _layers(pattern: str, index, name: str, n: int | None) -> range | list[int]:
    """The stacked layers of ``name`` (``n`` of them; None: not stacked) that ``index`` selects."""
    if index is None:
        return range(n or 1)
    if n is None:
        raise ValueError(f"recipe rule {pattern!r} indexes layers, but {name} is not a stacked layer "
                         "(index a stack made with nnx.vmap, e.g. the LLaMA's blocks)")
    if isinstance(index, slice):
        return range(n)[index]
    if not -n <= index < n:
        raise ValueError(f"recipe rule {pattern!r} indexes layer {index} of {name}, which has {n} stacked "
                         f"layers (allowed: {-n}..{n - 1})")
    return [index % n]


def assign_recipes(model: nnx.Module, rules: Sequence[tuple[str, Recipe | str]]) -> dict[str, str]:
    """Sets each quantized layer's ``recipe`` from the first rule whose regular expression
    matches (``re.search``) its path, the attribute names joined by ``/`` (``"blocks/0/mlp/up"``).

    ``rules`` are ``(pattern, recipe or name)`` pairs, e.g.
    ``[("lm_head|embed", "bf16"), (".*", "fp4_paper")]``. Layers no rule matches keep their
    recipe. Returns ``{path: recipe name}`` for every quantized layer (for logs and reports).

    Stacked layers (made with ``nnx.vmap``, e.g. the LLaMA's ``blocks``, paths
    ``"blocks/mlp/up"``) are addressed by layer index with a suffix after a path component, in
    Python's index or slice syntax (negative: from the end): ``("blocks[0]", "bf16")`` (the first
    block), ``("blocks[-2:]", "bf16")`` (the last two), ``("blocks[::2]/mlp", "fp8")``. The rule
    is the pattern without the suffix, applied to the selected layers only; first match wins per
    layer. A stacked layer whose layers end up with different recipes holds one per layer (a
    tuple; returned as ``"<path>[<i>]"`` entries) and its model runs them layer by layer
    (``models.llama``: consecutive layers with equal recipes share one scan). A bracket is an
    index when it follows a name, precedes ``/`` or the end, and holds an integer or a ``:``;
    any other bracket is a regular-expression class (``attn/[qkv]``). An invalid index, an
    integer out of range, or an index on an unstacked layer is a ValueError naming the rule.
    """
    compiled = []
    for pattern, recipe in rules:
        regex, index = _split_index(pattern)
        try:
            compiled.append((pattern, re.compile(regex), index, recipes.get(recipe)))
        except re.error as e:
            raise ValueError(f"rule pattern {pattern!r} is not a regular expression: {e}") from None
    used, assigned = set(), {}
    for path, module in nnx.iter_modules(model):
        if not isinstance(module, QuantModule):
            continue
        name = "/".join(str(p) for p in path)
        stack = module._stack_shape()
        n = stack[0] if len(stack) == 1 else None
        current = module.recipe
        per_layer = list(current) if isinstance(current, tuple) else [current] * (n or 1)
        chosen = [False] * len(per_layer)
        for pattern, regex, index, recipe in compiled:
            if not regex.search(name):
                continue
            for i in _layers(pattern, index, name, n):
                if not chosen[i]:
                    per_layer[i], chosen[i] = recipe, True
                    used.add(pattern)
        if any(chosen):
            module.recipe = recipe_value(per_layer)
            module.sync_amax_history()
        if isinstance(module.recipe, tuple):
            assigned.update({f"{name}[{i}]": r.name or str(r) for i, r in enumerate(module.recipe)})
        else:
            assigned[name] = module.recipe.name or str(module.recipe)
    for pattern, *_ in compiled:
        if pattern not in used:
            logger.warning("recipe rule %r matched no quantized layer; layers: %s", pattern, ", ".join(assigned))
    return assigned


def assign_execution(model: nnx.Module, execution: Execution | str | dict | None) -> Execution | None:
    """Sets every quantized layer's ``execution`` (``Execution.parse``; None: each recipe's own
    fields), how its GEMMs compute their recipe's bits; returns the Execution set."""
    chosen = None if execution is None else Execution.parse(execution)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, QuantModule):
            module.execution = chosen
    return chosen


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
