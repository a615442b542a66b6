"""The recipes a run config names, recorded in its config.json so that any process rebuilds them.

``cfg.recipe`` and ``cfg.recipe_rules`` name recipes; a name that only a sweep config registers
at import (``configs/fp4_ablation.py``'s ``w4a8_dge5``) is unknown elsewhere. A run's
config.json therefore holds ``recipe_definitions``: ``[[name, recipe_json.encode(recipe)], ...]``
for every name its config uses, and loading resolves names through it first. Run directories
written before it hold names only: those load where the name is registered, and otherwise fail
naming the config file that registers it.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re

from lowprec.ops import recipe_json, recipes
from lowprec.ops.recipe import Recipe

log = logging.getLogger(__name__)
FIELD = "recipe_definitions"
_warned: set[str] = set()


class UnknownRunRecipe(ValueError):
    """A run config names a recipe that this process does not know and config.json does not define."""


def names(cfg) -> list[str]:
    """The recipe names (strings) of ``cfg.recipe`` and ``cfg.recipe_rules``, each once, in order."""
    specs = [spec for _, spec in cfg.recipe_rules] + [cfg.recipe]
    return list(dict.fromkeys(s for s in specs if isinstance(s, str)))


def definitions(cfg) -> list[list]:
    """``[[name, encoded recipe], ...]`` for ``cfg``'s recipe names (a recipe with no JSON form,
    such as one holding a lambda, is left out with a warning: the run then reloads only where
    that name is registered)."""
    out = []
    for name in names(cfg):
        try:
            out.append([name, recipe_json.encode(recipes.get(name))])
        except recipe_json.NotSerializable as e:
            log.warning("recipe %r is not recorded in config.json (%s): the run reloads only in a process that "
                        "registers it", name, e)
    return json.loads(json.dumps(out))


def resolve(cfg, spec):
    """The Recipe ``spec`` (a name, a call string or a Recipe) means in ``cfg``: its definition
    in config.json when recorded (the recipe as trained), else ``recipes.get(spec)``."""
    if not isinstance(spec, str):
        return spec
    recorded = dict(cfg.get(FIELD) or [])
    if spec in recorded:
        recipe = recipe_json.decode(recorded[spec])
        _warn_if_redefined(spec, recipe)
        return recipe
    try:
        return recipes.get(spec)
    except ValueError as e:
        if str(e).startswith("unknown recipe"):
            raise UnknownRunRecipe(str(e)) from None
        raise


def rules(cfg) -> list[tuple[str, Recipe]]:
    """``cfg.recipe_rules`` with their recipes resolved (see ``resolve``)."""
    return [(pattern, resolve(cfg, spec)) for pattern, spec in cfg.recipe_rules]


def check_run(workdir: str, cfg) -> None:
    """Raises UnknownRunRecipe naming the config file that registers a recipe the run in
    ``workdir`` names but neither defines nor finds registered (a run written before runs
    recorded their recipes' definitions)."""
    for name in names(cfg):
        try:
            resolve(cfg, name)
        except UnknownRunRecipe:
            files = registering_files(name, workdir)
            where = (f"it is registered by {' or '.join(files)}" if files else
                     "no config file under configs/ names it")
            raise UnknownRunRecipe(
                f"{os.path.join(workdir, 'config.json')} names recipe {name!r}, which is not registered in this "
                f"process, and (written before runs recorded their recipes) holds no definition of it; {where}: "
                f"import that file before loading the run (e.g. importlib.import_module('configs.<name>'))") from None


def registering_files(name: str, workdir: str) -> list[str]:
    """Config files that may register recipe ``name``: the sweep config of the run's
    ``manifest.json`` (one directory up) when it names the recipe, else ``configs/*.py`` files
    whose string literals (f-strings as patterns) give ``name``."""
    manifest = os.path.join(os.path.dirname(os.path.abspath(workdir)), "manifest.json")
    candidates = []
    if os.path.exists(manifest):
        with open(manifest) as f:
            specs = json.load(f).get("config", "")
        candidates = [s.partition(":")[0] for s in specs.split(" + ") if s]
    found = [p for p in dict.fromkeys(candidates) if os.path.isfile(p) and _names_in(p, name)]
    if found:
        return found
    roots = dict.fromkeys([os.path.join(os.getcwd(), "configs"),
                           os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs")])
    paths = sorted({os.path.relpath(os.path.join(r, f)) for r in roots if os.path.isdir(r)
                    for f in os.listdir(r) if f.endswith(".py")})
    return [p for p in paths if _names_in(p, name)]


def _names_in(path: str, name: str) -> bool:
    """Whether a string literal of ``path`` equals ``name`` or an f-string of it can give ``name``."""
    try:
        tree = ast.parse(open(path).read())
    except (OSError, SyntaxError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value == name:
            return True
        if isinstance(node, ast.JoinedStr):
            pattern = "".join(re.escape(v.value) if isinstance(v, ast.Constant) else ".+" for v in node.values)
            if re.fullmatch(pattern, name):
                return True
    return False


def _warn_if_redefined(name: str, recipe: Recipe) -> None:
    if name in _warned or name not in recipes.names():
        return
    if recipes.get(name) != recipe:
        _warned.add(name)
        log.warning("recipe %r as this run recorded it differs from lp.recipes' %r in this process: using the "
                    "run's (as trained)", name, name)
