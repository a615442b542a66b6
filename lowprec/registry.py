"""One grammar and one registry shape for every named thing in lowprec.

A spec is ``name`` or ``name(k=v, ...)``; values are Python literals (numbers, strings,
``True``/``False``/``None``, tuples, lists), and where a registry is made with ``words=True``
also bare words read as strings and lowercase ``true``/``false``/``none`` (``dge(dtype=bfloat16)``,
the form those kinds print their own names in). ``parse_call`` is the one parser; ``Registry``
the one shape (``register``, ``get``, ``names``, ``unregister``) and the one set of errors.
This module imports nothing from lowprec, so every layer can use it.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

_WORDS = {"true": True, "false": False, "none": None, "True": True, "False": False, "None": None}


def parse_call(text: str, *, kind: str = "name", words: bool = False) -> tuple[str, dict[str, Any]]:
    """``"name"`` -> ``("name", {})``; ``"name(k=v, ...)"`` -> ``("name", {"k": v, ...})``.

    Errors are one ``ValueError`` line, ``"<kind> spec '<text>': <why>"``.
    """
    if not isinstance(text, str):
        raise TypeError(f"a {kind} spec is a string; got {type(text).__name__}")
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise _syntax(kind, text, f"not name or name(k=v, ...) ({e.msg})") from None
    if isinstance(node, ast.Name):
        return node.id, {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise _syntax(kind, text, "not name or name(k=v, ...)")
    if node.args or any(k.arg is None for k in node.keywords):
        raise _syntax(kind, text, "arguments are keyword=literal pairs (no positional arguments)")
    keys = [k.arg for k in node.keywords]
    if len(set(keys)) < len(keys):
        raise _syntax(kind, text, f"argument {next(k for k in keys if keys.count(k) > 1)!r} given twice")
    return node.func.id, {k.arg: _literal(k.value, kind, text, words) for k in node.keywords}


def _literal(node: ast.expr, kind: str, text: str, words: bool):
    if isinstance(node, ast.Name) and words:
        return _WORDS.get(node.id, node.id)
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal(e, kind, text, words) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise _syntax(kind, text, f"arguments are keyword=literal pairs; {ast.unparse(node)!r} is not a "
                                  "literal (quote strings)") from None


def _syntax(kind: str, text: str, why: str) -> ValueError:
    return ValueError(f"{kind} spec {text!r}: {why}")


def params_of(fn: Callable) -> tuple[str, ...]:
    """The keyword arguments ``fn`` takes, in order (``name`` left out: the spec names the result)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds and p.name != "name")


class Registry:
    """Named entries of one kind: ``get("name")``, ``get("name(k=v)")``, ``register``, ``names``.

    ``check(name, obj)`` validates an entry and returns what is stored (raise to refuse).
    An entry takes arguments when it is registered with a ``factory`` (``factory(**kwargs)``
    builds the result; its keywords are the known arguments), or when the registry has a
    ``derive(obj, kwargs)`` with ``params(obj)``, e.g. a recipe with fields replaced.
    ``constructors`` are factories reachable only by a call (``fp(e=3, m=2)``), not names.
    """

    def __init__(self, kind: str, *, check: Callable[[str, Any], Any] | None = None,
                 derive: Callable[[Any, dict], Any] | None = None,
                 params: Callable[[Any], tuple[str, ...]] | None = None, words: bool = False):
        self.kind, self.words = kind, words
        self._check, self._derive, self._params = check, derive, params
        self._entries: dict[str, Any] = {}
        self._factories: dict[str, Callable] = {}
        self.constructors: dict[str, Callable] = {}

    def register(self, name: str, obj: Any, overwrite: bool = False, *, factory: Callable | None = None) -> Any:
        """Stores ``obj`` as ``name`` and returns what is stored; a different entry of that name
        needs ``overwrite=True``."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.kind} names are identifiers (letters, digits, _); got {name!r}")
        stored = self._check(name, obj) if self._check else obj
        if name in self._entries and not overwrite and self._entries[name] != stored:
            raise ValueError(f"{self.kind} {name!r} is already registered as {self._entries[name]!r}; "
                             "pass overwrite=True")
        self._entries[name] = stored
        if factory is not None:
            self._factories[name] = factory
        else:
            self._factories.pop(name, None)
        return stored

    def unregister(self, name: str) -> None:
        """Removes ``name`` (an unknown name is an error)."""
        if name not in self._entries:
            raise ValueError(self._unknown(name))
        del self._entries[name]
        self._factories.pop(name, None)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, spec: str) -> Any:
        """The entry ``spec`` names, built with its arguments if it has any."""
        if isinstance(spec, str) and spec.strip() in self._entries:
            return self._entries[spec.strip()]
        name, kwargs = parse_call(spec, kind=self.kind, words=self.words)
        build, known = self._builder(name)
        if build is None:
            if name in self._entries:
                raise ValueError(f"{self.kind} {spec!r}: {name} takes no arguments")
            raise ValueError(self._unknown(spec))
        unknown = [k for k in kwargs if k not in known]
        if unknown:
            raise ValueError(f"{self.kind} {spec!r}: unknown argument {unknown[0]!r}; known: {', '.join(known)}")
        return build(kwargs)

    def _builder(self, name: str):
        if name in self._factories:
            fn = self._factories[name]
            return (lambda kw: fn(**kw)), params_of(fn)
        if name in self._entries and self._derive is not None:
            obj = self._entries[name]
            return (lambda kw: self._derive(obj, kw)), tuple(self._params(obj))
        if name in self.constructors:
            fn = self.constructors[name]
            return (lambda kw: fn(**kw)), params_of(fn)
        return None, ()

    def _unknown(self, spec: str) -> str:
        calls = "".join(f", {c}(...)" for c in self.constructors)
        return f"unknown {self.kind} {spec!r}; known: {', '.join(self.names())}{calls}"
