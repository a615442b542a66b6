"""Reads a sweep root: the manifest (or, without one, every subdirectory holding config.json),
each run's config, STATUS, metrics and log, into plain values the rest of the report uses."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re

from tqdm.auto import tqdm

from launch.sweep import varying_axes
from lowprec.train import run_recipes, schema
from lowprec.train.rundir import RunDir, read_metrics

MANIFEST = "manifest.json"
SEEDS_FILE = "seeds.json"  # a directory of seeds trained in one process (lowprec.train.loop.SEEDS_FILE)
NOT_STARTED = "not started"

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    """One run: its id and directory, the override values of the sweep's axes, its resolved
    config (nested dict; empty when it never started), STATUS, and its metrics by split."""

    id: str
    path: str
    overrides: dict
    config: dict
    status: str
    reason: str
    train: list[dict]
    val: list[dict]
    telemetry: list[dict]
    log_text: str
    commits: tuple = ()  # the git commits its starts ran at (runner.log), in order, each once

    def value(self, axis: str):
        """This run's value on ``axis`` (a dotted config path): the resolved config's, else the override's."""
        node = self.config
        for part in axis.split("."):
            if not isinstance(node, dict) or part not in node:
                return self.overrides.get(axis)
            node = node[part]
        return node


@dataclasses.dataclass
class Sweep:
    """A sweep root: where its runs came from (``spec`` and ``manifest`` say which path ran)."""

    root: str
    spec: str | None
    created: str | None
    axes: list[str]
    runs: list[Run]
    versions: dict
    git: str | None
    manifest: bool


def number(value) -> float:
    """A metric value as a float: JSON numbers as they are, the strings "nan"/"inf"/"-inf" that
    the metrics writer stores for non-finite values as the matching floats."""
    return float(value)  # float() reads "nan", "inf" and "-inf" as well


def load(root: str, only: str | None = None) -> Sweep:
    """The sweep at ``root`` (only the runs whose id matches the regex ``only``, when given); a
    clear error when it holds no runs."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"sweep root {root!r} is not a directory")
    manifest_path = os.path.join(root, MANIFEST)
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        entries = [(e["id"], e.get("overrides", {})) for e in manifest.get("runs", [])]
        log.info("manifest.json: %d runs of %s", len(entries), manifest.get("config"))
        _warn_unlisted(root, {run_id for run_id, _ in entries})
    else:
        manifest = None
        entries = [(d, {}) for d in sorted(os.listdir(root)) if os.path.isfile(os.path.join(root, d, "config.json"))
                   or os.path.isfile(os.path.join(root, d, SEEDS_FILE))]
        log.info("no manifest.json: %d run directories with config.json; axes inferred from their configs",
                 len(entries))
    entries = _seed_runs(root, entries)
    if only is not None:
        try:
            pattern = re.compile(only)
        except re.error as e:
            raise ValueError(f"--only {only!r} is not a regular expression: {e}") from None
        kept = [(run_id, o) for run_id, o in entries if pattern.search(run_id)]
        if not kept:
            raise ValueError(f"--only {only!r} matches none of the {len(entries)} run ids under {root!r} "
                             f"(e.g. {entries[0][0] if entries else '-'})")
        log.info("--only %r: %d of %d runs", only, len(kept), len(entries))
        entries = kept
    if not entries:
        raise ValueError(f"no runs under {root!r}: expected manifest.json listing runs, or subdirectories "
                         f"holding config.json (run directories written by lowprec.train.loop.train)")
    runs = [read_run(root, run_id, overrides) for run_id, overrides in tqdm(entries, desc="reading runs", unit="run")]
    if manifest is None:
        axes = infer_axes([r.config for r in runs])
        for r in runs:
            r.overrides = {a: r.value(a) for a in axes}
        runs.sort(key=lambda r: [_order(r.value(a)) for a in axes])
        return Sweep(root, None, None, axes, runs, {}, None, False)
    axes = list(manifest.get("axes", []))
    if "seed" not in axes and "seed" in varying_axes([o for _, o in entries]):  # seeds of one process
        axes.append("seed")
    if only is not None:  # the axes that vary among the runs kept
        varying = varying_axes([r.overrides for r in runs])
        axes = [a for a in axes if a in varying]
    return Sweep(root, manifest.get("config"), manifest.get("created"), axes, runs,
                 manifest.get("versions") or {}, manifest.get("git"), True)


def _seed_runs(root: str, entries: list) -> list:
    """``entries`` with each directory of seeds trained in one process (``train.seeds_per_process``:
    a seeds.json, a run directory per seed) replaced by its seeds' runs, ``<id>/seed-<s>``, each
    with its seed among its overrides."""
    out = []
    for run_id, overrides in entries:
        path = os.path.join(root, run_id, SEEDS_FILE)
        if not os.path.isfile(path):
            out.append((run_id, overrides))
            continue
        with open(path) as f:
            group = json.load(f)
        out += [(f"{run_id}/{d}", {**overrides, "seed": s}) for s, d in zip(group["seeds"], group["dirs"])]
    return out


def _warn_unlisted(root: str, listed: set[str]) -> None:
    extra = [d for d in sorted(os.listdir(root))
             if d not in listed and os.path.isfile(os.path.join(root, d, "config.json"))]
    if extra:
        log.warning("run directories not in manifest.json are left out: %s", ", ".join(extra))


def read_run(root: str, run_id: str, overrides: dict) -> Run:
    """The run ``<root>/<run_id>`` (status "not started" when its directory does not exist)."""
    path = os.path.join(root, run_id)
    if not os.path.isdir(path):
        return Run(run_id, path, dict(overrides), {}, NOT_STARTED, "", [], [], [], "")
    config = {}
    if os.path.exists(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json")) as f:
            config = schema.upgrade(json.load(f))  # an older version's run reads with today's fields
    status, reason = RunDir(path).status()
    records = read_metrics(os.path.join(path, "metrics.jsonl"))
    split = {name: [r for r in records if r.get("split") == name] for name in ("train", "val", "telemetry")}
    log_path = os.path.join(path, "log.txt")
    log_text = open(log_path, errors="replace").read() if os.path.exists(log_path) else ""
    return Run(run_id, path, dict(overrides), config, status or NOT_STARTED, reason, split["train"], split["val"],
               split["telemetry"], log_text, started_at(path))


def started_at(path: str) -> tuple:
    """The git commits the run's starts ran at, from its runner.log (empty for runs launched before
    the runner recorded them)."""
    log_path = os.path.join(path, "runner.log")
    if not os.path.exists(log_path):
        return ()
    with open(log_path, errors="replace") as f:
        return tuple(dict.fromkeys(re.findall(r"started on slot .* at git ([0-9a-f]{7,40})", f.read())))


def _order(value) -> tuple:
    """A sort key putting numbers in numeric order before other values in text order."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, json.dumps(value, sort_keys=True))


def flatten(config: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and other values kept as leaves)."""
    out = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


# Recorded in config.json from the run's other fields, never set by a sweep.
DERIVED_FIELDS = (run_recipes.FIELD,)


def infer_axes(configs: list[dict]) -> list[str]:
    """The config paths whose value differs between runs (runs without a config, and fields derived
    from other fields, such as ``recipe_definitions``, are ignored)."""
    flats = [{p: v for p, v in flatten(c).items() if p not in DERIVED_FIELDS} for c in configs if c]
    paths = []
    for flat in flats:
        paths += [p for p in flat if p not in paths]
    return [p for p in paths if len({json.dumps(f.get(p), sort_keys=True) for f in flats}) > 1]


def finite(value) -> bool:
    """Whether a metric value is a finite number."""
    try:
        return math.isfinite(number(value))
    except (TypeError, ValueError):
        return False
