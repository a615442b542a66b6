"""A run config checked before start-up, and a resumed run's config checked against its own.

``check`` raises one ``ConfigError`` line naming the field and its allowed values for a value
that could not train (``train.steps=0``, an unknown recipe, format or estimator), before any
model is built or run directory made. ``changes`` lists what differs between the config a run
was trained with (its config.json) and the one it is resumed with. ``data_seed`` resolves the
seed of the data order (``data_seed``, or ``seed`` where it is -1).
"""

from __future__ import annotations

import json
import math
import re

from lowprec.models import llama
from lowprec.optim import get_policy
from lowprec.train import finetune_modes, run_recipes

# (field, lowest, highest or None, integer?): bounds inclusive unless OPEN_AT names the open end.
RANGES = (
    ("train.steps", 1, None, True), ("train.log_every", 1, None, True), ("train.eval_every", 1, None, True),
    ("train.checkpoint_every", 1, None, True), ("train.keep_checkpoints", 1, None, True),
    ("train.eval_batches", 1, None, True), ("train.telemetry_every", 0, None, True),
    ("data.seq_len", 1, None, True), ("data.batch_size", 1, None, True), ("optim.grad_accum", 1, None, True),
    ("optim.warmup_steps", 0, None, True), ("optim.lr", 0, None, False), ("optim.eps", 0, None, False),
    ("optim.clip_norm", 0, None, False), ("optim.weight_decay", 0, None, False),
    ("optim.min_lr_ratio", 0, 1, False), ("optim.b1", 0, 1, False), ("optim.b2", 0, 1, False),
)
OPEN_AT = {"optim.lr": "low", "optim.eps": "low", "optim.clip_norm": "low", "optim.b1": "high", "optim.b2": "high"}
# Fields a resumed run may change without an override: they do not change what is computed
# (scan_unroll: the same layers, compiled with or without a loop; absent from older runs).
RESUME_FREE = ("train.progress", "model.scan_unroll")
# Fields added after runs were recorded, with their defaults: a field absent from a run's
# config.json stands for this value there, so resuming under the default is no change.
# (data_seed -1: the data order follows seed, as every run before the field did.)
ADDED_DEFAULTS = {"data_seed": -1, "imports": [], "model.arch": "", "data.tokenizer": "", "finetune.init_from_hf": "",
                  "train.seeds_per_process": 1}


class ConfigError(ValueError):
    """A config value that cannot train; the message is one line naming the field."""


def check(cfg, device_count: int | None = None) -> None:
    """Raises ConfigError for the first impossible value of ``cfg`` (see ``RANGES``), an unknown
    model size, policy, recipe, recipe rule pattern or finetune field (formats, estimators)."""
    for field, lo, hi, integer in RANGES:
        _check_range(cfg, field, lo, hi, integer)
    value = cfg.get("data_seed", -1)
    if not isinstance(value, int) or isinstance(value, bool) or value < -1:
        raise ConfigError(f"data_seed must be an integer >= 0, or -1 (the same as seed); got {value!r}")
    if cfg.data.batch_size % cfg.optim.grad_accum:
        raise ConfigError(f"optim.grad_accum={cfg.optim.grad_accum} must divide data.batch_size="
                          f"{cfg.data.batch_size}")
    devices = cfg.mesh.devices
    if not (isinstance(devices, int) and (devices == -1 or 1 <= devices <= (device_count or devices))):
        raise ConfigError(f"mesh.devices must be -1 (all) or 1 to {device_count or 'the device count'}; "
                          f"got {devices!r}")
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


def _check_range(cfg, field: str, lo, hi, integer: bool) -> None:
    node = cfg
    for part in field.split("."):
        node = node[part]
    value, open_at = node, OPEN_AT.get(field)
    if hi is None:
        allowed = f"> {lo}" if open_at == "low" else f">= {lo}"
    else:
        allowed = f"in {'(' if open_at == 'low' else '['}{lo}, {hi}{')' if open_at == 'high' else ']'}"
    number = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
    ok = number and not isinstance(value, bool) and (value > lo if open_at == "low" else value >= lo) and (
        hi is None or (value < hi if open_at == "high" else value <= hi))
    if not ok:
        raise ConfigError(f"{field} must be {'an integer' if integer else 'a number'} {allowed}; got {value!r}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_config(cfg) -> dict:
    """What config.json records for ``cfg``: its fields as JSON and its recipes' definitions."""
    out = json.loads(json.dumps(cfg.to_dict(), sort_keys=True, default=str))
    out[run_recipes.FIELD] = run_recipes.definitions(cfg)
    return out


def changes(old: dict, new: dict) -> dict[str, tuple]:
    """``{field: (old value, new value)}`` where the configs differ (``"<absent>"`` for a field
    only one has), less ``RESUME_FREE``; a field of ``ADDED_DEFAULTS`` absent from one side is
    its default there; recipe definitions compared by name; a run recorded before definitions
    were (none in ``old``) is compared on its fields alone."""
    recorded = run_recipes.FIELD in old
    old, new = ({**ADDED_DEFAULTS, **_flat(c)} for c in (old, new))
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
