"""experiments/evaluate.py on a trained smoke run: its own recipe reproduces the loop's held-out
loss; another recipe evaluates the same weights in that format."""

import json

import pytest

from configs import lm
from experiments import evaluate
from lowprec.train import loop
from lowprec.train.rundir import read_metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    cfg = lm.get_config("smoke")
    cfg.train.steps, cfg.train.progress, cfg.train.eval_every, cfg.train.checkpoint_every = 12, False, 12, 12
    cfg.mesh.devices = 1
    loop.train(cfg, str(path))
    return str(path)


def test_as_trained_equals_the_loops_own_validation_and_other_recipes_differ(trained, tmp_path, capsys):
    val = [r for r in read_metrics(f"{trained}/metrics.jsonl") if r.get("split") == "val"][-1]
    out = tmp_path / "eval.json"
    assert evaluate.main([trained, "--recipe", "fp4_paper", "--recipe", "fp8", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = {r["recipe"]: r for r in result["rows"]}
    assert result["step"] == val["step"] == 12 and list(rows) == ["bf16", "fp4_paper", "fp8"]
    own = rows["bf16"]
    assert own["as_trained"] and own["loss_increase"] == 0.0
    # the same weights and held-out batches as the training loop's last evaluation, another code path
    assert own["loss"] == pytest.approx(val["loss"], rel=1e-5)
    for name in ("fp4_paper", "fp8"):
        assert rows[name]["loss"] != own["loss"] and rows[name]["loss_increase"] == rows[name]["loss"] - own["loss"]
    assert rows["fp4_paper"]["bits_per_byte"] == pytest.approx(rows["fp4_paper"]["loss"] / 0.6931471805599453, rel=1e-12)
    assert "| fp4_paper |" in printed and "bf16 (as trained)" in printed
    assert result["environment"]["jax"]


def test_bad_arguments_are_named(trained, tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main([trained, "--recipe", "fp7"])
    assert "--recipe: unknown recipe 'fp7'; known: bf16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path)])
    assert "is not a run directory: it has no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main([trained, "--batches", "0"])
    assert "--batches must be >= 1; got 0" in capsys.readouterr().err
