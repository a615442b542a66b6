"""A run config checked before start-up, and a resumed run's config checked against its own.

``check`` raises one ``ConfigError`` line naming the field and its allowed values for a value
that could not train (``train.steps=0``, an unknown recipe, format or estimator), before any
model is built or run directory made: ``schema.check`` first (fields, ranges, choices; the
schema declares them), then what needs the other packages. ``changes`` lists what differs between the config a run
was trained with (its config.json) and the one it is resumed with. ``data_seed`` resolves the
seed of the data order (``data_seed``, or ``seed`` where it is -1).
"""

from __future__ import annotations

import json
import re

from lowprec.models import llama
from lowprec.optim import get_policy
from lowprec.quant.execution import Execution
from lowprec.train import finetune_modes, run_recipes, schema
from lowprec.train.schema import ConfigError  # noqa: F401  (its old import path)

# (field, lowest, highest or None, integer?) and the open ends: the schema's ranges, at their old names.
_RANGED = [f for f in schema.FIELDS if isinstance(f.allowed, schema.Range)]
RANGES = tuple((f.path, f.allowed.lo, f.allowed.hi, f.allowed.integer) for f in _RANGED)
OPEN_AT = {f.path: f.allowed.open_at for f in _RANGED if f.allowed.open_at}
# Fields a resumed run may change without an override: they do not change what is computed
# (scan_unroll: the same layers, compiled with or without a loop; absent from older runs;
# execution: the same bits, computed another way).
RESUME_FREE = ("train.progress", "model.scan_unroll", "execution")
# Fields added after runs were recorded, with the value that stands for them where a run's
# config.json lacks them (schema.ADDED), so resuming under that value is no change.
ADDED_DEFAULTS = {field: value for field, value in schema.ADDED if field not in RESUME_FREE}


def check(cfg, device_count: int | None = None) -> None:
    """Raises ConfigError for the first impossible value of ``cfg``: ``schema.check``'s (missing
    or unknown fields, ranges, choices), then an unknown model size, policy, recipe, recipe rule
    pattern or finetune field (formats, estimators)."""
    schema.check(cfg, device_count)
    for field, call in (("model.size", lambda: llama.config_for(cfg.model.size)),
                        ("policy", lambda: get_policy(cfg.policy)), ("", lambda: finetune_modes.check(cfg))):
        try:  # the messages of finetune_modes.check name their fields
            call()
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(_one_line(f"{field}: {e}" if field else str(e))) from None
    for i, (pattern, _) in enumerate(cfg.recipe_rules):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"recipe_rules[{i}] pattern {pattern!r} is not a regular expression: {e}") from None
    try:
        Execution.parse(cfg.execution)
    except (ValueError, TypeError) as e:
        raise ConfigError(_one_line(f"execution: {e}")) from None
    for name in run_recipes.names(cfg):
        try:
            run_recipes.resolve(cfg, name)
        except ValueError as e:
            raise ConfigError(_one_line(str(e))) from None


def data_seed(cfg) -> int:
    """The seed of the data order (the batch permutation): ``cfg.data_seed``, or ``cfg.seed``
    where it is -1 or absent, so a sweep over ``seed`` with ``data_seed`` fixed varies only the
    initialization (and the other random streams ``seed`` sets)."""
    value = cfg.get("data_seed", -1)
    return cfg.seed if value == -1 else value


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_config(cfg) -> dict:
    """What config.json records for ``cfg``: its fields as JSON and its recipes' definitions."""
    out = json.loads(json.dumps(cfg.to_dict(), sort_keys=True, default=str))
    out[run_recipes.FIELD] = run_recipes.definitions(cfg)
    return out


def changes(old: dict, new: dict) -> dict[str, tuple]:
    """``{field: (old value, new value)}`` where the configs differ (``"<absent>"`` for a field
    only one has), less ``RESUME_FREE``; each side brought up to date first (``schema.upgrade``:
    a field of ``ADDED_DEFAULTS`` absent from one side is its old meaning there); recipe
    definitions compared by name; a run recorded before definitions
    were (none in ``old``) is compared on its fields alone."""
    recorded = run_recipes.FIELD in old
    old, new = (_flat(schema.upgrade(c)) for c in (old, new))
    if not recorded:
        new = {k: v for k, v in new.items() if not k.startswith(run_recipes.FIELD)}
    out = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if key not in RESUME_FREE and json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out[key] = (a, b)
    return out


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if key == run_recipes.FIELD and not prefix:
            out.update({f"{key}[{name}]": d for name, d in value or []})
        elif isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def describe_changes(diff: dict[str, tuple], width: int = 60) -> str:
    """``a.b (1 -> 2), ...`` with long values (recipe definitions) shown as "changed"."""
    parts = []
    for key, (a, b) in diff.items():
        text = f"{json.dumps(a, default=str)} -> {json.dumps(b, default=str)}"
        parts.append(f"{key} ({text})" if len(text) <= width else f"{key} (changed)")
    return ", ".join(parts)
