"""Sweep definitions: axes, expansion into runs (names, hashes, commands), selection, the manifest."""

import hashlib
import importlib.metadata
import json
import os
import shlex

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from launch import sweep


def test_axes_compose():
    grid = sweep.product(sweep.axis("recipe", ["a", "b"]),
                         sweep.zip_axes(sweep.axis("optim.lr", [1, 2]), sweep.axis("optim.b1", [0.8, 0.9])),
                         sweep.seeds(2, start=5))
    assert len(grid) == 8
    assert grid[0] == {"recipe": "a", "optim.lr": 1, "optim.b1": 0.8, "seed": 5}
    assert grid[1] == {"recipe": "a", "optim.lr": 1, "optim.b1": 0.8, "seed": 6}  # the last axis moves fastest
    assert grid[2] == {"recipe": "a", "optim.lr": 2, "optim.b1": 0.9, "seed": 5}
    assert grid[-1] == {"recipe": "b", "optim.lr": 2, "optim.b1": 0.9, "seed": 6}
    assert sweep.seeds(3) == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
    with pytest.raises(ValueError, match="equal length"):
        sweep.zip_axes(sweep.axis("a", [1, 2]), sweep.axis("b", [1]))
    with pytest.raises(ValueError, match="two axes"):
        sweep.product(sweep.axis("a", [1]), sweep.axis("a", [2]))
    with pytest.raises(ValueError, match="no values"):
        sweep.axis("a", [])


def test_runs_are_named_by_overrides_and_config_hash(spec, tmp_path):
    runs = sweep.expand(spec, str(tmp_path / "root"))
    for run, name in zip(runs, ["recipe-none", "recipe-bf16", "recipe-bf16_data-3"], strict=True):
        text = json.dumps(run.config.to_dict(), sort_keys=True, default=str)
        assert run.id == f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        assert run.path == os.path.join(str(tmp_path / "root"), run.id)
    assert [(r.config.recipe, r.config.mesh.data) for r in runs] == [("none", -1), ("bf16", -1), ("bf16", 3)]
    assert len({r.id for r in runs}) == 3
    assert [r.id for r in runs] == [r.id for r in sweep.expand(spec, str(tmp_path / "other"))]  # stable
    assert sweep.varying_axes(runs) == ["recipe", "mesh.data"]
    assert sweep.readable_name({"model.attention": "", "recipe": "fp4(e2m1, 1x32)"}) == \
        "attention-empty_recipe-fp4-e2m1-1x32"
    assert len(sweep.readable_name({f"a{i}": "v" * 50 for i in range(9)})) <= sweep.MAX_NAME


def test_overrides_are_validated(spec):
    base = sweep.load_sweep(spec)[0].get_config()
    with pytest.raises(KeyError, match=r"train has no key 'stepz'; known: .*checkpoint_every.*steps"):
        sweep.apply_overrides(base, {"train.stepz": 3})
    with pytest.raises(KeyError, match="the config has no key 'nope'"):
        sweep.apply_overrides(base, {"nope": 1})
    with pytest.raises(KeyError, match="'recipe.x'"):
        sweep.apply_overrides(base, {"recipe.x": 1})  # recipe is a string, not a node
    with pytest.raises(TypeError, match="'train.steps'='many'"):
        sweep.apply_overrides(base, {"train.steps": "many"})
    cfg = sweep.apply_overrides(base, {"optim.lr": 1, "train.steps": 9})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.train.steps == 9
    assert base.train.steps == 4  # the base is untouched


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # ml_collections loading the file
@pytest.mark.parametrize("arg", ["", ":types"])
def test_commands_give_the_trainer_the_runs_config(spec, tmp_path, arg):
    """Each run's --config.* flags, parsed as experiments/train.py parses them, give the run's config."""
    runs = sweep.expand(spec + arg, str(tmp_path))
    assert len(runs) == (3 if not arg else 4)
    for run in runs:
        assert run.command[1:3] == ["-m", "experiments.train"]
        argv = ["train"] + run.command[3:]
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
        flags.DEFINE_string("workdir", None, "", flag_values=values)
        values(argv)
        assert values.workdir == run.path
        assert values.config.to_dict() == run.config.to_dict()
        assert sweep.config_hash(values.config) == run.id[-8:]


def test_select_splits_runs_between_workers(spec, tmp_path):
    runs = sweep.expand(spec + ":bad", str(tmp_path))
    parts = [sweep.select(runs, None, None, i, 3) for i in range(3)]
    assert [[r.id for r in p] for p in parts] == [[runs[0].id, runs[3].id], [runs[1].id], [runs[2].id]]
    assert [r.id for r in sweep.select(runs, "data-[56]", None, 0, 1)] == [runs[1].id, runs[2].id]
    assert [r.id for r in sweep.select(runs, None, 2, 0, 1)] == [runs[0].id, runs[1].id]
    with pytest.raises(ValueError, match="--only"):
        sweep.select(runs, "data-[", None, 0, 1)
    with pytest.raises(ValueError, match="--worker"):
        sweep.select(runs, None, None, 3, 3)


def test_dry_run_prints_commands_and_runs_nothing(spec, tmp_path, capsys):
    root = str(tmp_path / "r")
    assert sweep.main([spec, "--root", root, "--dry-run"]) == 0
    out = capsys.readouterr().out
    runs = sweep.expand(spec, root)
    assert "3 of 3 runs" in out and out.count("-m experiments.train") == 3
    for run in runs:
        assert f"{run.id}\n    {shlex.join(run.command)}\n" in out
    assert not os.path.exists(root)
    assert sweep.main([spec, "--root", root, "--dry-run", "--only", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "2 of 3 runs" in out and runs[1].id in out and runs[2].id in out and runs[0].id not in out


def test_manifest_records_config_runs_versions(spec, tmp_path):
    root = str(tmp_path / "m")
    runs = sweep.expand(spec, root)
    sweep.write_manifest(root, spec, runs[:2])
    first = sweep.read_manifest(root)
    assert [r["id"] for r in first["runs"]] == [r.id for r in runs[:2]]
    sweep.write_manifest(root, spec, runs)  # the sweep grew
    manifest = sweep.read_manifest(root)
    assert manifest["config"] == spec and manifest["created"] == first["created"]
    assert manifest["axes"] == ["recipe", "mesh.data"]
    assert manifest["runs"] == [{"id": r.id, "overrides": r.overrides, "command": r.command} for r in runs]
    assert manifest["versions"]["jax"] == jax.__version__
    assert manifest["versions"]["lowprec"] == importlib.metadata.version("lowprec")
    assert manifest["git"] is None or len(manifest["git"]) == 40
    # A later sweep into the same root holding one value of a new path (runs at a larger lr):
    # within it nothing varies but the recipe, yet across the root optim.lr does.
    later = [sweep.Run(r.id + "-lr", {**r.overrides, "optim.lr": 3e-3}, r.config, r.command, r.path + "-lr")
             for r in runs[:2]]
    sweep.write_manifest(root, spec, later)
    assert sweep.read_manifest(root)["axes"] == ["recipe", "mesh.data", "optim.lr"]


def test_manifest_names_every_sweep_config_of_its_root(spec, tmp_path):
    root = str(tmp_path / "m")
    runs = sweep.expand(spec, root)
    sweep.write_manifest(root, spec, runs[:1])
    sweep.write_manifest(root, "configs/other.py:lr", runs[1:2])  # a follow-up sweep into the same root
    assert sweep.read_manifest(root)["config"] == f"{spec} + configs/other.py:lr"
    sweep.write_manifest(root, spec, runs)  # the first sweep again (resuming): named once, first
    manifest = sweep.read_manifest(root)
    assert manifest["config"] == f"{spec} + configs/other.py:lr"
    assert [r["id"] for r in manifest["runs"]] == [r.id for r in runs]


def test_seeds_per_process_groups_consecutive_seeds_of_one_setting(spec, tmp_path):
    root = str(tmp_path / "root")
    single = sweep.expand(spec + ":seeds", root)
    assert [r.seeds for r in single] == [None] * 4
    runs = sweep.expand(spec + ":seeds", root, seeds_per_process=2)
    assert [r.seeds for r in runs] == [[0, 1], None, None]  # bf16 0-1 together; bf16 2 and none 5 alone
    group, rest, lone = runs
    assert group.id.startswith("recipe-bf16_seeds-0-1-") and group.overrides == {"recipe": "bf16", "seed": 0}
    assert (group.config.seed, group.config.train.seeds_per_process) == (0, 2)
    assert group.command[-2:] == ["--config.seed=0", "--config.train.seeds_per_process=2"]
    # A chunk of one seed is the run it would be without grouping: same id, config and command.
    assert (rest.id, rest.command) == (single[2].id, single[2].command)
    assert (lone.id, lone.command) == (single[3].id, single[3].command)
    assert [r.seeds for r in sweep.expand(spec + ":seeds", root, seeds_per_process=3)] == [[0, 1, 2], None]
    sweep.write_manifest(root, spec, runs)
    manifest = sweep.read_manifest(root)
    assert [m.get("seeds") for m in manifest["runs"]] == [[0, 1], None, None]


def test_seed_groups_take_consecutive_seeds_and_refuse_bad_input():
    family = [{"recipe": "a", "seed": s} for s in (4, 0, 1, 3, 7)]
    groups = sweep.group_seeds(family + [{"recipe": "b"}], 2, base_seed=9)
    assert groups == [({"recipe": "a", "seed": 0}, [0, 1]), ({"recipe": "a", "seed": 3}, [3, 4]),
                      ({"recipe": "a", "seed": 7}, None), ({"recipe": "b"}, None)]
    # Entries without a seed share the base config's seed; two of them are one config twice.
    assert sweep.group_seeds([{"x": 1}, {"x": 1, "seed": 10}], 2, base_seed=9) == [({"x": 1, "seed": 9}, [9, 10])]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="--seeds-per-process must be an integer >= 1"):
            sweep.group_seeds(family, bad)
    with pytest.raises(ValueError, match="sets train.seeds_per_process itself"):
        sweep.group_seeds([{"seed": 0, sweep.SEEDS_FIELD: 2}], 2)


def test_dry_run_shows_seed_groups(spec, tmp_path, capsys):
    assert sweep.main([spec + ":seeds", "--root", str(tmp_path), "--dry-run", "--seeds-per-process", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 of 3 runs") and "_seeds-0-1-" in out and "--config.train.seeds_per_process=2" in out
