"""config.imports: a user's module registers a format and a recipe that train by name, reload, and fail clearly."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from lowprec.train import imports
from lowprec.train.config_check import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE = '''import lowprec as lp
lp.formats.register("e2m2_user", lp.formats.FloatFormat(exp_bits=2, man_bits=2))
lp.recipes.register("w5a5_user", lp.ops.Recipe(
    fwd_act=lp.Quantizer("e2m2_user", "token"), fwd_weight=lp.Quantizer("e2m2_user", "channel"),
    compute_dtype="bfloat16"))
'''


def train(tmp_path, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "experiments.train", "--config", "configs/lm.py:smoke",
                           "--workdir", str(tmp_path / "run"), "--config.train.steps=2",
                           "--config.train.progress=False", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imports")
    (tmp / "user_formats_t.py").write_text(MODULE)
    relative = os.path.relpath(tmp / "user_formats_t.py", ROOT)  # the process runs in ROOT
    done = train(tmp, f"--config.imports={relative}", "--config.recipe=w5a5_user")
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp / "run"


def test_user_recipe_trains_by_name_and_is_recorded(trained):
    config = json.loads((trained / "config.json").read_text())
    # the relative path given is recorded absolute: a process elsewhere finds the file
    assert config["recipe"] == "w5a5_user" and config["imports"] == [str(trained.parent / "user_formats_t.py")]
    assert "imported (config imports): user_formats_t" in (trained / "log.txt").read_text()


def test_reload_imports_the_run_modules(trained):
    from lowprec.ops import recipes
    from lowprec.train import restore

    run = restore.load_run(str(trained))
    assert "w5a5_user" in recipes.names() and run.step == 2


def test_bad_import_is_one_line(tmp_path):
    done = train(tmp_path, "--config.imports=no_such_module_xyz")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "imports" in lines[0] and "no_such_module_xyz" in lines[0]
    assert not (tmp_path / "run").exists()


def test_specs_and_errors(tmp_path):
    assert imports.specs("a, b.py") == ["a", "b.py"] and imports.specs(("a", "c")) == ["a", "c"]
    (tmp_path / "broken_t.py").write_text("x = 1\nraise ValueError('boom')\n")
    with pytest.raises(ConfigError, match=r"imports: importing .*broken_t.py.* ValueError: boom \(broken_t.py:2\)"):
        imports.load(str(tmp_path / "broken_t.py"))
    with pytest.raises(ConfigError, match="imports: no file"):
        imports.load(str(tmp_path / "missing.py"))


def test_evaluate_knows_the_run_recipes_in_a_fresh_process(trained):
    # --recipe names a recipe of the run's imports; checked after they are imported, from another directory
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "experiments.evaluate", str(trained), "--recipe", "w5a5_user",
                           "--batches", "1", "--no-progress"],
                          cwd=trained.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| w5a5_user (as trained) |" in done.stdout and "| w5a5_user | " in done.stdout
    bad = subprocess.run([sys.executable, "-m", "experiments.evaluate", str(trained), "--recipe", "no_such_recipe"],
                         cwd=trained.parent, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--recipe" in bad.stderr and "no_such_recipe" in bad.stderr


def test_from_config_records_relative_paths_absolute(tmp_path, monkeypatch):
    import ml_collections

    (tmp_path / "rel_user_t.py").write_text("VALUE = 1\n")
    monkeypatch.chdir(tmp_path)
    cfg = ml_collections.ConfigDict({"imports": ("rel_user_t.py", "json")})
    cfg.lock()
    assert imports.from_config(cfg) == ["rel_user_t", "json"]
    assert cfg.imports == (str(tmp_path / "rel_user_t.py"), "json")
    text = ml_collections.ConfigDict({"imports": "rel_user_t.py,json"})
    imports.from_config(text)
    assert text.imports == f"{tmp_path / 'rel_user_t.py'},json"
