"""lowprec.train.fields: the config field table and --helpconfig from one source."""

import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from lowprec.train import fields

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_value_text():
    assert [fields.value_text(v) for v in (0, -1, True, 1e-3, 3e-3, 1e-8, 0.95, 16.0)] == [
        "0", "-1", "True", "1e-3", "3e-3", "1e-8", "0.95", "16.0"]
    assert fields.value_text("") == '`""`' and fields.value_text("nf4") == "`nf4`"
    assert fields.value_text(()) == "`()`" and fields.value_text((("lm_head", "bf16"),)) == '`(("lm_head", "bf16"),)`'


def test_default_text_groups_the_variants_that_differ():
    base = {"train.steps": 5000, "optim.lr": 1e-3, "seed": 0}
    variants = {"cpu": {"train.steps": 600, "optim.lr": 3e-3, "seed": 0},
                "smoke": {"train.steps": 60, "optim.lr": 3e-3, "seed": 0}}
    assert fields.default_text("train.steps", base, variants) == "5000 (`cpu` 600, `smoke` 60)"
    assert fields.default_text("optim.lr", base, variants) == "1e-3 (`cpu`, `smoke` 3e-3)"
    assert fields.default_text("seed", base, variants) == "0"


def test_markdown_table_rows_and_a_missing_field():
    cfg = ml_collections.ConfigDict({"seed": 0, "train": {"steps": 10, "progress": True}})
    table = fields.markdown_table(cfg, {"smoke": ml_collections.ConfigDict(
        {"seed": 0, "train": {"steps": 2, "progress": True}})}).splitlines()
    assert table[:2] == [fields.HEADER, "|---|---|---|"]
    assert table[2:] == [f"| `seed` | 0 | {fields.FIELDS['seed']} |",
                         f"| `train.steps` | 10 (`smoke` 2) | {fields.FIELDS['train.steps']} |",
                         f"| `train.progress` | True | {fields.FIELDS['train.progress']} |"]
    with pytest.raises(KeyError, match="lacks config fields: train.nope"):
        fields.markdown_table(ml_collections.ConfigDict({"train": {"nope": 1}}))


def test_replace_table_keeps_the_text_around():
    text = f"# t\n\nintro\n\n{fields.HEADER}\n|---|---|---|\n| `a` | 1 | old |\n\nafter\n"
    new = f"{fields.HEADER}\n|---|---|---|\n| `a` | 2 | new |"
    out = fields.replace_table(text, new)
    assert out == f"# t\n\nintro\n\n{new}\n\nafter\n" and fields.table_in(out) == new


def test_helpconfig_prints_the_variant_and_trains_nothing(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "experiments.train", "--config", "configs/lm.py:smoke", "--helpconfig",
                           "--workdir", str(tmp_path / "run")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[1:]}
    assert set(lines) == set(fields.FIELDS)
    assert lines["train.steps"] == "60" and lines["data.source"] == "'synthetic'"  # smoke's, not 20m's
    assert "optimizer steps" in done.stdout and not (tmp_path / "run").exists()
