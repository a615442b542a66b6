"""A Recipe as JSON and back: what a run directory records so that any process rebuilds it.

A recipe registered by one config file (``configs/fp4_ablation.py``'s ``w4a8_dge5``) is unknown
to a process that never imported that file; its fields are not. ``encode`` writes the frozen
dataclass tree (Recipe, Quantizer, formats, granularities, estimators, OCC) field by field with
each value's class; ``decode`` rebuilds an equal Recipe. Module-level functions (an estimator's
derivative) are written as ``module:name`` references.
"""

from __future__ import annotations

import dataclasses
import importlib

from lowprec.ops.recipe import Recipe

_CLASS, _REF, _TUPLE = "@class", "@ref", "@tuple"  # keys no dataclass field (or ConfigDict) uses


class NotSerializable(ValueError):
    """A recipe holding a value that has no JSON form (a lambda, a local function or class)."""


def encode(recipe: Recipe) -> dict:
    """``recipe``'s fields (nested) as JSON-ready values; ``decode`` gives an equal Recipe."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"encode needs a Recipe; got {type(recipe).__name__}")
    return _encode(recipe, "recipe")


def decode(data: dict) -> Recipe:
    """The Recipe that ``encode`` wrote as ``data``."""
    recipe = _decode(data, "recipe")
    if not isinstance(recipe, Recipe):
        raise ValueError(f"a recipe definition must encode a Recipe; got {type(recipe).__name__}")
    return recipe


def _encode(value, where: str):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        items = [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {_CLASS: _reference(type(value), where)}
        for f in dataclasses.fields(value):
            if f.init:
                out[f.name] = _encode(getattr(value, f.name), f"{where}.{f.name}")
        return out
    if callable(value):
        return {_REF: _reference(value, where)}
    raise NotSerializable(f"{where}: a {type(value).__name__} has no JSON form")


def _reference(obj, where: str) -> str:
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not module or "<" in name or module == "__main__":
        raise NotSerializable(f"{where}: {obj!r} is not importable by name (define it at module level)")
    return f"{module}:{name}"


def _resolve(ref: str, where: str):
    module, _, name = ref.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{where}: cannot import {ref!r} ({e})") from None
    return obj


def _decode(value, where: str):
    if isinstance(value, list):
        return [_decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not hasattr(value, "keys"):
        return value
    value = dict(value)
    if _TUPLE in value:
        return tuple(_decode(v, f"{where}[{i}]") for i, v in enumerate(value[_TUPLE]))
    if _REF in value:
        return _resolve(value[_REF], where)
    if _CLASS not in value:
        raise ValueError(f"{where}: expected an encoded value with {_CLASS!r}; got keys {sorted(value)}")
    cls = _resolve(value.pop(_CLASS), where)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ValueError(f"{where}: {cls!r} is not a dataclass")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise ValueError(f"{where}: {cls.__name__} has no field(s) {', '.join(unknown)}; "
                         f"fields: {', '.join(sorted(fields))}")
    return cls(**{k: _decode(v, f"{where}.{k}") for k, v in value.items()})
