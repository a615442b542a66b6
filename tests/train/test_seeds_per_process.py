"""``train.seeds_per_process``: seeds as a vmapped axis of one process, each seed's run directory
as its run alone writes it (losses and checkpoints bit for bit on XLA:CPU, config.json, STATUS),
resumable, read by the reports as runs."""

import json
import os

import jax
import numpy as np
import pytest

from lowprec.train import loop, restore
from lowprec.train.config_check import ConfigError
from lowprec.train.rundir import RunDir, read_metrics
from tests.train.test_train import losses, smoke

STEPS = 6
BASE = {"mesh.devices": 1, "data.batch_size": 4, "data.seq_len": 32, "train.steps": STEPS, "train.log_every": 1,
        "train.eval_every": STEPS, "train.checkpoint_every": 100, "train.eval_batches": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    loop.train(smoke(seed=1, **BASE), str(root / "alone-1"))
    group = loop.train(smoke(seed=0, **{**BASE, "train.seeds_per_process": 2}), str(root / "group"))
    return root, group


def test_each_seed_trains_as_its_run_alone(runs):
    root, group = runs
    assert sorted(group["seeds"]) == [0, 1] and group["step"] == STEPS
    alone, together = losses(root / "alone-1"), losses(root / "group" / "seed-1")
    assert [s for s, _ in alone] == [s for s, _ in together] == list(range(1, STEPS + 1))
    assert together == alone  # bit for bit on XLA:CPU (the optimizer update unrolled per seed)
    assert _records(root / "group" / "seed-1", "val")[0]["loss"] == _records(root / "alone-1", "val")[0]["loss"]
    seed0 = losses(root / "group" / "seed-0")
    assert seed0[0][1] != together[0][1]  # another initialization and data order
    for seed in (0, 1):
        d = root / "group" / f"seed-{seed}"
        config = json.load(open(d / "config.json"))
        assert config["seed"] == seed and config["train"]["seeds_per_process"] == 1
        assert RunDir(str(d)).status() == ("done", "")
        assert [r["step"] for r in _records(d, "val")] == [STEPS]
        assert (d / "log.txt").stat().st_size > 0
    assert RunDir(str(root / "group")).status() == ("done", "")
    assert json.load(open(root / "group" / loop.SEEDS_FILE))["dirs"] == ["seed-0", "seed-1"]


def test_checkpoints_restore_per_seed(runs):
    root, _ = runs
    a = restore.load_run(str(root / "alone-1"))
    b1, b0 = (restore.load_run(str(root / "group" / f"seed-{s}")) for s in (1, 0))
    assert a.step == b1.step == b0.step == STEPS and b1.cfg.seed == 1
    for x, y, z in zip(jax.tree.leaves(a.params), jax.tree.leaves(b1.params), jax.tree.leaves(b0.params)):
        assert x.shape == y.shape  # one seed's parameters, no seed axis
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    assert not all(np.array_equal(y, z) for y, z in zip(jax.tree.leaves(b1.params), jax.tree.leaves(b0.params)))


def test_resume_after_a_stop_continues_identically(runs, tmp_path):
    root, _ = runs
    cfg = smoke(seed=0, **{**BASE, "train.seeds_per_process": 2})
    stopped = loop.train(cfg, str(tmp_path), stop_at=3)
    assert stopped["step"] == 3 and "interrupted" not in stopped  # stop_at: no signal
    for seed in (0, 1):
        status, reason = RunDir(str(tmp_path / f"seed-{seed}")).status()
        assert status == "running" and "step 3" in reason
    loop.train(cfg, str(tmp_path))
    for seed in (0, 1):
        assert losses(tmp_path / f"seed-{seed}") == losses(root / "group" / f"seed-{seed}")  # bit for bit
        assert RunDir(str(tmp_path / f"seed-{seed}")).status() == ("done", "")


@pytest.mark.parametrize("overrides, field", [
    ({"train.seeds_per_process": 0}, "train.seeds_per_process"),
    ({"train.seeds_per_process": 2, "finetune.mode": "lora"}, "finetune.mode"),
])
def test_unsupported_combinations_are_one_line_errors(tmp_path, overrides, field):
    with pytest.raises(ConfigError) as e:
        loop.train(smoke(**{**BASE, **overrides}), str(tmp_path / "run"))
    assert field in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "run")


def _records(d, split):
    return [r for r in read_metrics(os.path.join(d, "metrics.jsonl")) if r["split"] == split]


def test_reports_read_each_seed_of_a_group(runs):
    from experiments.reporting import load

    root, _ = runs
    (root / "manifest.json").write_text(json.dumps({"config": "x", "axes": [], "runs": [{"id": "group",
                                                                                          "overrides": {}}]}))
    sweep = load.load(str(root))
    assert [r.id for r in sweep.runs] == ["group/seed-0", "group/seed-1"] and sweep.axes == ["seed"]
    assert [r.overrides for r in sweep.runs] == [{"seed": 0}, {"seed": 1}]
    assert [r.status for r in sweep.runs] == ["done", "done"] and all(len(r.train) == STEPS for r in sweep.runs)


def test_amax_histories_are_per_seed_state(tmp_path):
    """A delayed-scaling recipe: the amax histories ride the seed axis like the parameters."""
    kw = {**BASE, "recipe": "fp8_delayed", "train.steps": 3, "train.eval_every": 3}
    loop.train(smoke(seed=1, **kw), str(tmp_path / "alone"))
    loop.train(smoke(seed=0, **{**kw, "train.seeds_per_process": 2}), str(tmp_path / "group"))
    assert losses(tmp_path / "group" / "seed-1") == losses(tmp_path / "alone")
    a, b = (restore.load_run(str(tmp_path / d)) for d in ("alone", "group/seed-1"))
    histories = [x for x in jax.tree.leaves(b.rest)]
    assert histories and all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.rest), histories))
    assert any(np.any(np.asarray(x) != 0) for x in histories)  # trained, not the initial zeros
