"""Sweeps from config files: axes, expansion into named run directories, the manifest, the CLI.

A config file defines ``get_config(arg)`` and ``get_sweep(arg)``, the latter a list of
override dicts built with the helpers here::

    from launch.sweep import axis, product, seeds
    def get_sweep(arg):
        return product(axis("recipe", ["bf16", "fp8"]), axis("optim.lr", [1e-3, 3e-3]), seeds(2))

    python -m launch.sweep configs/precision.py --root runs/precision --dry-run
    python -m launch.sweep configs/precision.py --root runs/precision --parallel 4
    python -m launch.sweep configs/precision.py --root runs/precision --seeds-per-process 2

Each run is ``<root>/<readable name>-<hash8>`` (the hash is of the fully resolved config), so a
re-run finds its runs again: done ones are skipped, interrupted or failed ones resume from their
checkpoints. Any number of runners (processes, SLURM array tasks, machines on one filesystem)
may share a sweep; each run is claimed atomically (see ``launch.runner``).

``--seeds-per-process N`` trains runs that differ only in ``seed`` (consecutive seeds) N to a
process (``train.seeds_per_process``): one directory ``<readable name>_seeds-<a>-<b>-<hash8>`` per
group, holding each seed's run directory (``seed-<s>``); the report reads them as separate runs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys

import ml_collections

MANIFEST = "manifest.json"
TRAIN_MODULE = "experiments.train"
MAX_NAME = 120  # characters of a run id before its hash (directory names have a 255-byte limit)
# Distributions whose versions the manifest records.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml-collections", "ml-dtypes", "numpy", "lowprec")

log = logging.getLogger(__name__)


# ---- axes ----
def axis(path: str, values) -> list[dict]:
    """One axis: ``[{path: v} for v in values]``; ``path`` is a config path such as ``"optim.lr"``."""
    values = list(values)
    if not values:
        raise ValueError(f"axis {path!r} has no values")
    return [{path: v} for v in values]


def product(*axes: list[dict]) -> list[dict]:
    """The cartesian product of axes (each a list of override dicts), first axis slowest."""
    return [_merge(combo) for combo in itertools.product(*axes)]


def zip_axes(*axes: list[dict]) -> list[dict]:
    """Axes of equal length merged elementwise (values that move together)."""
    lengths = sorted({len(a) for a in axes})
    if len(lengths) > 1:
        raise ValueError(f"zip_axes needs axes of equal length; got lengths {[len(a) for a in axes]}")
    return [_merge(combo) for combo in zip(*axes)]


def seeds(n: int, start: int = 0) -> list[dict]:
    """``axis("seed", range(start, start + n))``."""
    return axis("seed", range(start, start + n))


def _merge(dicts) -> dict:
    out = {}
    for d in dicts:
        clash = set(out) & set(d)
        if clash:
            raise ValueError(f"the same config path is set by two axes: {sorted(clash)}")
        out.update(d)
    return out


# ---- expansion ----
@dataclasses.dataclass
class Run:
    """One run of a sweep: its id (the directory name), overrides, resolved config, command, directory."""

    id: str
    overrides: dict
    config: ml_collections.ConfigDict
    command: list[str]
    path: str
    seeds: list[int] | None = None  # a group of seeds trained in one process (their run dirs inside)


def load_sweep(spec: str):
    """(config module, arg) of ``"configs/file.py[:arg]"``."""
    path, _, arg = spec.partition(":")
    if not path.endswith(".py") or not os.path.isfile(path):
        raise FileNotFoundError(f"sweep config {path!r} is not a .py file (spec: 'configs/<file>.py[:<arg>]')")
    name = "_sweep_" + re.sub(r"\W", "_", os.path.splitext(path)[0])
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"{path} defines no get_config(arg)")
    return module, (arg or None)


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """A copy of ``cfg`` with ``{"a.b": v}`` set; an unknown key names the keys that exist there.

    The copy keeps every field's type (placeholders included), so ml_collections' rules apply
    exactly as they do to ``--config.a.b=v`` on the training command line.
    """
    cfg = copy.deepcopy(cfg)
    for path, value in overrides.items():
        node, parts = cfg, path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(parts[:i]) or "the config"
                known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
                raise KeyError(f"override {path!r}: {where} has no key {part!r}; known: {known}")
            if i < len(parts) - 1:
                node = node[part]
        try:
            node[parts[-1]] = value
        except TypeError as e:
            raise TypeError(f"override {path!r}={value!r}: {e}") from None
    return cfg


def config_hash(cfg: ml_collections.ConfigDict) -> str:
    """The first 8 hex digits of the sha256 of the resolved config as JSON (sorted keys)."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def readable_name(overrides: dict) -> str:
    """``recipe-fp8_seed-1``: each override's last path component and value, in order."""
    parts = [f"{path.split('.')[-1]}-{_clean(value)}" for path, value in overrides.items()]
    return "_".join(parts)[:MAX_NAME].rstrip("_-") or "run"  # the hash after it keeps ids distinct


def _clean(value) -> str:
    # '_' separates the parts of a name, so it is replaced inside values too.
    text = re.sub(r"[^A-Za-z0-9.=-]+", "-", str(value)).strip("-")
    return text[:60] or "empty"


def _cli_value(value) -> str:
    """The value as ml_collections' config flags parse it back: sequences as Python literals."""
    if isinstance(value, (list, tuple)):
        return repr(type(value)(value))
    return str(value)


def train_command(spec: str, workdir: str, overrides: dict) -> list[str]:
    """The argv that trains one run (run from the repository root)."""
    return [sys.executable, "-m", TRAIN_MODULE, "--config", spec, "--workdir", workdir] + [
        f"--config.{path}={_cli_value(v)}" for path, v in overrides.items()]


def expand(spec: str, root: str = "runs/sweep", seeds_per_process: int = 1) -> list[Run]:
    """The runs of ``spec``'s ``get_sweep(arg)`` (one run of ``get_config(arg)`` without one);
    ``seeds_per_process`` > 1 groups seeds as ``group_seeds`` does."""
    module, arg = load_sweep(spec)
    base = module.get_config(arg)
    sweep = module.get_sweep(arg) if hasattr(module, "get_sweep") else [{}]
    for overrides in sweep:
        if not isinstance(overrides, dict):
            raise TypeError(f"get_sweep must return a list of dicts; got an item {overrides!r}")
    runs, seen = [], {}
    for overrides, seeds in group_seeds(sweep, seeds_per_process, base.get("seed", 0)):
        settings = dict(overrides)
        if seeds:
            settings.update({"seed": seeds[0], SEEDS_FIELD: len(seeds)})
        cfg = apply_overrides(base, settings)
        name = readable_name(overrides) if not seeds else \
            readable_name({**{k: v for k, v in overrides.items() if k != "seed"}, "seeds": f"{seeds[0]}-{seeds[-1]}"})
        run_id = f"{name}-{config_hash(cfg)}"
        if run_id in seen:
            raise ValueError(f"two sweep entries give the same config ({seen[run_id]} and {overrides})")
        seen[run_id] = overrides
        path = os.path.join(root, run_id)
        runs.append(Run(run_id, dict(overrides), cfg, train_command(spec, path, settings), path, seeds))
    return runs


SEEDS_FIELD = "train.seeds_per_process"


def group_seeds(sweep: list[dict], n: int, base_seed: int = 0) -> list[tuple[dict, list[int] | None]]:
    """``(overrides, seeds)`` per process: with ``n`` > 1, entries equal but for ``seed`` (the base
    config's where unset) are joined into groups of up to ``n`` consecutive seeds, in order of
    first appearance (``overrides`` then sets the group's first seed; ``seeds`` lists them); an
    entry left alone keeps its overrides and ``seeds`` None."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"--seeds-per-process must be an integer >= 1; got {n!r}")
    if n == 1:
        return [(o, None) for o in sweep]
    if any(SEEDS_FIELD in o for o in sweep):
        raise ValueError(f"--seeds-per-process {n}: the sweep sets {SEEDS_FIELD} itself; use one or the other")
    families: dict[str, tuple[dict, list]] = {}
    for o in sweep:
        rest = {k: v for k, v in o.items() if k != "seed"}
        key = json.dumps(rest, sort_keys=True, default=str)
        families.setdefault(key, (o, []))[1].append(o.get("seed", base_seed))
    out = []
    for first, family in families.values():
        rest = {k: v for k, v in first.items() if k != "seed"}
        for chunk in _consecutive_chunks(family, n):
            if len(chunk) == 1:
                out.append(({**rest, "seed": chunk[0]} if "seed" in first else dict(first), None))
            else:
                out.append(({**rest, "seed": chunk[0]}, chunk))
    return out


def _consecutive_chunks(seeds: list[int], n: int) -> list[list[int]]:
    """``seeds`` (sorted, duplicates kept apart) in runs of consecutive integers of at most ``n``."""
    chunks: list[list[int]] = []
    for s in sorted(seeds):
        if chunks and len(chunks[-1]) < n and isinstance(s, int) and s == chunks[-1][-1] + 1:
            chunks[-1].append(s)
        else:
            chunks.append([s])
    return chunks


def varying_axes(runs: list) -> list[str]:
    """The override paths whose value differs between runs (Runs or their override dicts; a path
    some runs do not set differs), in order of first appearance."""
    overrides = [r if isinstance(r, dict) else r.overrides for r in runs]
    paths = []
    for o in overrides:
        paths += [p for p in o if p not in paths]
    return [p for p in paths if len({json.dumps(o.get(p), default=str) for o in overrides}) > 1]


# ---- manifest ----
def versions() -> dict:
    """Python's and the installed packages' versions (None: not installed)."""
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The repository's HEAD commit, or None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_manifest(root: str, spec: str, runs: list[Run]) -> str:
    """Writes (atomically) ``<root>/manifest.json``; runs of an earlier manifest are kept."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, MANIFEST)
    entries = {r.id: {"id": r.id, "overrides": r.overrides, "command": r.command,
                      **({"seeds": r.seeds} if r.seeds else {})} for r in runs}
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    specs = [spec]
    if os.path.exists(path):
        old = read_manifest(root)
        created = old.get("created", created)
        entries = {**{e["id"]: e for e in old.get("runs", [])}, **entries}
        # Every sweep config that wrote into this root, in order ("a.py:all + a.py:lr").
        earlier = [s for s in old.get("config", "").split(" + ") if s]
        specs = earlier + ([] if spec in earlier else [spec])
    # The axes of every listed run: a later sweep into the same root may set paths the earlier did not.
    axes = varying_axes([e.get("overrides", {}) for e in entries.values()])
    manifest = {"config": " + ".join(specs), "created": created, "axes": axes, "runs": list(entries.values()),
                "versions": versions(), "git": git_commit()}
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"  # runners on several hosts may write it
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, default=str)
    os.replace(tmp, path)
    return path


def read_manifest(root: str) -> dict:
    """``<root>/manifest.json`` as a dict."""
    with open(os.path.join(root, MANIFEST)) as f:
        return json.load(f)


# ---- CLI ----
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.sweep", description=__doc__.splitlines()[0])
    p.add_argument("spec", help="configs/<file>.py[:<arg>]")
    p.add_argument("--root", required=True, help="the sweep's directory (runs/<name>)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their commands; run nothing")
    p.add_argument("--parallel", type=int, default=None,
                   help="runs at a time (default: one per GPU group, see --devices; 1 without GPUs)")
    p.add_argument("--devices", default=None,
                   help="GPU indices for the slots, e.g. 0,1,2,3 (repeat one to share it: 0,0,1,1); "
                        "default: $CUDA_VISIBLE_DEVICES, else the GPUs nvidia-smi lists")
    p.add_argument("--gpus-per-run", type=int, default=1, help="GPUs each run sees (consecutive devices)")
    p.add_argument("--seeds-per-process", type=int, default=1,
                   help="train runs that differ only in seed N to a process (train.seeds_per_process)")
    p.add_argument("--start-within", type=float, default=None, metavar="SECONDS",
                   help="start no run after this many seconds (running runs finish; a re-run takes the rest)")
    p.add_argument("--only", default=None, help="regex: only runs whose id matches")
    p.add_argument("--max-runs", type=int, default=None, help="at most this many runs (after --only)")
    p.add_argument("--worker", type=int, default=0, help="this runner takes runs with index %% num_workers == worker")
    p.add_argument("--num-workers", type=int, default=1, help="how many workers split the sweep (SLURM array size)")
    p.add_argument("--retry-failed", action=argparse.BooleanOptionalAction, default=True,
                   help="start failed runs again (default) or leave them")
    p.add_argument("--refresh", type=float, default=5.0, help="seconds between summary lines")
    return p


def select(runs: list[Run], only: str | None, max_runs: int | None, worker: int, num_workers: int) -> list[Run]:
    """The runs one runner works on: ``--only`` and ``--max-runs`` first, then every num_workers-th."""
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise ValueError(f"--worker must be in [0, --num-workers) and --num-workers >= 1; "
                         f"got --worker {worker} --num-workers {num_workers}")
    if max_runs is not None and max_runs < 0:
        raise ValueError(f"--max-runs must be >= 0; got {max_runs}")
    if only:
        try:
            pattern = re.compile(only)
        except re.error as e:
            raise ValueError(f"--only {only!r} is not a regular expression: {e}") from None
        runs = [r for r in runs if pattern.search(r.id)]
    if max_runs is not None:
        runs = runs[:max_runs]
    return [r for i, r in enumerate(runs) if i % num_workers == worker]


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    # The launcher's messages go to stdout next to its tables (a handler of this call only).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[sweep] %(message)s"))
    package_log = logging.getLogger("launch")
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    try:
        return _main(args)
    finally:
        package_log.removeHandler(handler)


def _main(args) -> int:
    runs = expand(args.spec, args.root, args.seeds_per_process)
    mine = select(runs, args.only, args.max_runs, args.worker, args.num_workers)
    if args.dry_run:
        print(f"{len(mine)} of {len(runs)} runs of {args.spec} under {args.root}:")
        for r in mine:
            print(f"{r.id}\n    {shlex.join(r.command)}")
        return 0
    from launch import runner  # imports lowprec (and so jax), which a dry run does without

    write_manifest(args.root, args.spec, runs)
    slots = runner.slots(args.parallel, args.devices, args.gpus_per_run)
    return runner.Runner(mine, slots, retry_failed=args.retry_failed, refresh=args.refresh,
                         commit=git_commit(), start_within=args.start_within).run()


if __name__ == "__main__":
    sys.exit(main())
