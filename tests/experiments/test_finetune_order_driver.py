"""The fine-tune order driver: pretraining only when no checkpoint exists, nothing overwritten."""

import json
import os
import subprocess

import pytest

from configs import finetune_order as study
from experiments import finetune_order as driver
from lowprec.train.rundir import RunDir


@pytest.fixture
def fake_training(tmp_path, monkeypatch):
    """Pretraining directories under tmp_path; "training" writes STATUS done and a checkpoint step."""
    monkeypatch.setattr(study, "pretrain_dir", lambda size: str(tmp_path / f"pretrain-{size}"))
    calls = []

    def run(cmd, **kwargs):
        workdir = cmd[cmd.index("--workdir") + 1]
        calls.append(workdir)
        os.makedirs(os.path.join(workdir, "checkpoints", "2000"), exist_ok=True)
        with open(os.path.join(workdir, "checkpoints", "2000", "params"), "wb") as f:
            f.write(os.urandom(64))  # each training saves other weights
        RunDir(workdir).set_status("done")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(driver.subprocess, "run", run)
    return calls


def test_pretrains_once_and_reuses_a_checkpoint(tmp_path, fake_training):
    path = driver.ensure_pretrained("6m")
    assert fake_training == [path] and driver.has_checkpoint(path)
    assert driver.ensure_pretrained("6m") == path and fake_training == [path]  # not trained again


def test_a_done_run_without_checkpoint_is_moved_aside_and_trained_again(tmp_path, fake_training):
    path = str(tmp_path / "pretrain-20m")
    os.makedirs(path)
    RunDir(path).set_status("done")
    (tmp_path / "pretrain-20m" / "metrics.jsonl").write_text('{"step": 3000}\n')
    driver.ensure_pretrained("20m")
    aside = [d for d in os.listdir(tmp_path) if d.startswith("pretrain-20m.no-checkpoint-")]
    assert len(aside) == 1 and (tmp_path / aside[0] / "metrics.jsonl").read_text() == '{"step": 3000}\n'
    assert fake_training == [path] and driver.has_checkpoint(path)


def test_a_failed_pretraining_stops_the_study(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "pretrain_dir", lambda size: str(tmp_path / f"pretrain-{size}"))
    monkeypatch.setattr(driver.subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(SystemExit, match="pretraining 6m failed"):
        driver.ensure_pretrained("6m")


@pytest.mark.parametrize("args, match", [(["--sizes", "7m"], "unknown size"), (["--formats", "fp3"], "unknown format")])
def test_bad_arguments_name_the_allowed_values(args, match):
    with pytest.raises(SystemExit, match=f"{match}.*known"):
        driver.main(args)


def _arm(sweep_root, run_id, started_from):
    path = os.path.join(sweep_root, run_id)
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"finetune": {"mode": "full"}}, f)
    records = [{"step": 600, "split": "val", "loss": 1.4}]
    if started_from:
        records.insert(0, {"step": 0, "split": "init", "from": "x", "checkpoint_step": 2000, "checkpoint": started_from})
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    RunDir(path).set_status("done")


def test_arms_from_another_pretraining_are_set_aside(tmp_path, fake_training):
    first = driver.pretrained_checkpoint(driver.ensure_pretrained("6m"))
    sweep_root = str(tmp_path / "6m-int4")
    _arm(sweep_root, "mine", first)
    os.rename(tmp_path / "pretrain-6m", tmp_path / "pretrain-6m.lost")  # the pretraining is trained again
    again = driver.pretrained_checkpoint(driver.ensure_pretrained("6m"))
    assert again != first and len(again) == 16
    _arm(sweep_root, "current", again)
    _arm(sweep_root, "unrecorded", None)
    os.makedirs(os.path.join(sweep_root, "never-started"))  # no config.json: nothing to move
    moved = driver.set_aside_stale(sweep_root, again, str(tmp_path / "stale"))
    assert moved == ["mine", "unrecorded"]
    assert sorted(os.listdir(sweep_root)) == ["current", "never-started"]
    aside = sorted(os.listdir(tmp_path / "stale"))
    assert [a.split(".")[0] for a in aside] == ["mine", "unrecorded"]
    assert (tmp_path / "stale" / aside[0] / "metrics.jsonl").read_text().count("\n") == 2  # moved whole
    assert driver.set_aside_stale(sweep_root, again, str(tmp_path / "stale")) == []


def test_the_driver_logs_at_info_after_an_import_installed_a_root_handler(capsys):
    import logging

    from experiments.common import cli_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [logging.NullHandler()]  # what importing orbax does: basicConfig alone would do nothing
    root.setLevel(logging.WARNING)
    try:
        cli_logging("[finetune_order] %(message)s")
        driver.log.info("fine-tunes start from checkpoint %s", "abc")
        assert "[finetune_order] fine-tunes start from checkpoint abc" in capsys.readouterr().err
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
