"""lowprec.train.schema: one table of the run config's fields (defaults, docs, allowed values) and
the upgrade of older config.json files (tests/fixtures/run_configs.json, recorded from configs/lm.py
at the commits each entry names)."""

import json
import pathlib

import jax.numpy as jnp
import ml_collections
import pytest

from configs import lm
from lowprec.train import build, config_check, restore, schema

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
# configs/lm.py's configs as it wrote them before the schema existed (commit bfc5efa).
LM_CONFIGS = json.loads((FIXTURES / "lm_configs.json").read_text())["configs"]
RUN_CONFIGS = json.loads((FIXTURES / "run_configs.json").read_text())


def as_json(cfg) -> dict:
    return json.loads(json.dumps(cfg.to_dict(), sort_keys=True))


@pytest.mark.parametrize("variant", sorted(LM_CONFIGS))
def test_lm_configs_are_what_they_were_before_the_schema(variant):
    assert as_json(lm.get_config(variant)) == LM_CONFIGS[variant]


def test_defaults_are_the_base_variant_and_every_field_has_one_line_of_doc():
    assert as_json(schema.defaults()) == LM_CONFIGS["20m"] == as_json(lm.get_config())
    docs = schema.docs()
    assert list(docs) == [f.path for f in schema.FIELDS]
    assert sorted(docs) == sorted(schema.leaf_paths(schema.defaults()))
    assert all(d.strip() and "\n" not in d for d in docs.values())


def test_defaults_check_and_are_fresh_copies():
    a = schema.defaults()
    schema.check(a, 1)
    config_check.check(a, 1)
    a.train.steps = 7
    assert schema.defaults().train.steps == 5000


def _set(cfg, path, value):
    *blocks, key = path.split(".")
    node = cfg
    for block in blocks:
        node = node[block]
    with cfg.unlocked():
        node[key] = value
    return cfg


def _bad_values():
    for f in schema.FIELDS:
        if isinstance(f.allowed, schema.Range):
            yield f.path, f.allowed.lo - 1, f"{f.path} must be a"
            if f.allowed.hi is not None:
                yield f.path, f.allowed.hi + 1, rf"{f.path} must be a number in \["
        elif isinstance(f.allowed, tuple):
            yield f.path, "nope", f"unknown {f.path} 'nope'; known: "


@pytest.mark.parametrize("path, value, message", list(_bad_values()))
def test_a_bad_value_is_one_line_naming_the_field(path, value, message):
    cfg = _set(lm.get_config("smoke"), path, value)
    with pytest.raises(schema.ConfigError, match=f"^{message}") as e:
        schema.check(cfg, 1)
    assert "\n" not in str(e.value) and repr(value) in str(e.value)


def test_the_choices_and_bounds_are_in_the_message():
    with pytest.raises(schema.ConfigError, match=r"^unknown model.attention 'flash'; known: \"\", xla, cudnn$"):
        schema.check(_set(lm.get_config("smoke"), "model.attention", "flash"))
    with pytest.raises(schema.ConfigError, match=r"^optim.b1 must be a number in \[0, 1\); got 1.0$"):
        schema.check(_set(lm.get_config("smoke"), "optim.b1", 1.0))
    with pytest.raises(schema.ConfigError, match="^train.seeds_per_process must be an integer >= 1; got 0$"):
        schema.check(_set(lm.get_config("smoke"), "train.seeds_per_process", 0))


def test_unknown_and_missing_fields_are_named():
    cfg = _set(lm.get_config("smoke"), "train.stepz", 3)
    with pytest.raises(schema.ConfigError, match=r"^unknown config field\(s\) train.stepz; fields of train: "
                                                 "checkpoint_every, eval_batches, eval_every, "):
        schema.check(cfg)
    old = ml_collections.ConfigDict(RUN_CONFIGS["first_version"]["config"])
    with pytest.raises(schema.ConfigError, match=r"^config field\(s\) imports, data_seed, model.arch, .* missing "
                                                 r"\(a config.json of an older version is read through "):
        schema.check(old)


def test_every_field_is_in_the_first_version_or_added_since():
    first = set(schema.leaf_paths(RUN_CONFIGS["first_version"]["config"]))
    added = [path for path, _ in schema.ADDED]
    assert len(added) == len(set(added)) and not first & set(added)
    assert first | set(added) == set(schema.docs())


@pytest.mark.parametrize("name", sorted(RUN_CONFIGS))
def test_an_older_config_upgrades_to_one_that_checks_and_builds(name):
    old = RUN_CONFIGS[name]["config"]
    new = schema.upgrade(old)
    assert sorted(p for p in schema.leaf_paths(new) if not p.startswith("recipe_definitions")) == sorted(schema.docs())
    assert all(schema.get(new, p) == schema.get(old, p) for p in schema.leaf_paths(old))  # values it had stay
    assert all(schema.get(new, p) == v for p, v in schema.ADDED if p not in schema.leaf_paths(old))
    assert schema.upgrade(new) == new and old == RUN_CONFIGS[name]["config"]  # idempotent; the input is kept
    assert schema.upgrade(ml_collections.ConfigDict(old)) == new
    cfg = ml_collections.ConfigDict(new)
    config_check.check(cfg, 1)
    _, _, model = build.make_model(cfg)
    assert model(jnp.zeros((1, 8), jnp.int32)).shape == (1, 8, cfg.model.vocab_size)
    assert config_check.changes(old, new) == {}  # resuming an old run under its upgraded config is no change


def test_older_values_are_kept_not_replaced_by_todays_defaults():
    new = schema.upgrade(RUN_CONFIGS["finetune_nf4_before_scan_unroll"]["config"])
    assert new["finetune"]["base_format"] == "nf4" and new["data"]["source"] == "default"
    assert schema.upgrade(RUN_CONFIGS["before_finetune"]["config"])["finetune"] == {
        **schema.block_defaults("finetune")}  # no finetune block: a plain run


def test_renamed_fields_move(monkeypatch):
    monkeypatch.setattr(schema, "RENAMED", {"train.total_steps": "train.steps", "optim.peak_lr": "optim.lr"})
    old = {**LM_CONFIGS["smoke"], "train": {**LM_CONFIGS["smoke"]["train"], "total_steps": 9}}
    del old["train"]["steps"]
    new = schema.upgrade(old)
    assert new["train"]["steps"] == 9 and "total_steps" not in new["train"]
    assert new["optim"]["lr"] == LM_CONFIGS["smoke"]["optim"]["lr"]  # an absent old name changes nothing


def test_read_config_upgrades_an_older_run(tmp_path):
    old = RUN_CONFIGS["before_finetune"]["config"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = restore.read_config(str(tmp_path))
    assert as_json(cfg) == json.loads(json.dumps(schema.upgrade(old), sort_keys=True))
    assert cfg.finetune.mode == "full" and cfg.train.seeds_per_process == 1 and cfg.data.source == "default"
