"""Resume is safe: a changed config is refused unless overridden (and then recorded), signals
save and stop with their exit status, impossible values fail before start-up, logs are readable."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lowprec.train import loop
from lowprec.train.config_check import ConfigError
from lowprec.train.rundir import RunDir, read_metrics
from tests.train.test_train import ROOT, smoke

SHORT = {"train.steps": 4, "train.log_every": 2, "train.eval_every": 2, "train.eval_batches": 1,
         "train.checkpoint_every": 100, "mesh.devices": 1}


def test_a_changed_config_is_refused_unless_overridden_and_then_recorded(tmp_path):
    run = str(tmp_path / "run")
    loop.train(smoke(**SHORT), run, stop_at=2)
    before = open(os.path.join(run, "config.json")).read()
    changed = smoke(**{**SHORT, "optim.lr": 1e-3, "optim.weight_decay": 0.0, "train.progress": True})
    with pytest.raises(ConfigError) as e:
        loop.train(changed, run)
    message = str(e.value)
    assert "\n" not in message and "checkpoint at step 2" in message and "--resume_override" in message
    assert "optim.lr (0.003 -> 0.001)" in message and "optim.weight_decay (0.1 -> 0.0)" in message
    assert "train.progress" not in message  # a display setting, free to change
    assert open(os.path.join(run, "config.json")).read() == before and not os.path.exists(
        os.path.join(run, "config_history.jsonl"))
    assert RunDir(run).status()[0] == "running"  # the refused re-run left the interrupted run as it was

    out = loop.train(changed, run, resume_override=True)
    assert out["step"] == 4 and RunDir(run).status() == ("done", "")
    history = [json.loads(line) for line in open(os.path.join(run, "config_history.jsonl"))]
    assert len(history) == 1 and history[0]["resumed_from_checkpoint"] == 2
    assert history[0]["changed"]["optim.lr"] == {"old": 0.003, "new": 0.001}
    assert json.load(open(os.path.join(run, "config.json")))["optim"]["lr"] == 1e-3
    text = open(os.path.join(run, "log.txt")).read()
    assert "resuming under a changed config (resume_override): " in text and "optim.lr" in text
    # Readable logs: validation loss and a summary; no orbax INFO lines.
    assert "step 4: validation loss" in text and "summary: run ended at step 4, 2,048 tokens, train loss" in text
    assert "checkpoint_manager" not in text and "CheckpointManager" not in text
    # The same config resumes (here: nothing left to train) without an override.
    assert loop.train(changed, run)["step"] == 4


@pytest.mark.parametrize("override, message", [
    ({"train.steps": 0}, "train.steps must be an integer >= 1; got 0"),
    ({"train.steps": -5}, "train.steps must be an integer >= 1; got -5"),
    ({"train.log_every": 0}, "train.log_every must be an integer >= 1; got 0"),
    ({"data.batch_size": 6, "optim.grad_accum": 4}, "optim.grad_accum=4 must divide data.batch_size=6"),
    ({"optim.lr": 0.0}, "optim.lr must be a number > 0; got 0.0"),
    ({"optim.b2": 1.0}, r"optim.b2 must be a number in \[0, 1\); got 1.0"),
    ({"optim.min_lr_ratio": 1.5}, r"optim.min_lr_ratio must be a number in \[0, 1\]; got 1.5"),
    ({"mesh.devices": 0}, "mesh.devices must be -1 .all. or 1 to 8; got 0"),
    ({"recipe_rules": (("lm_head", "bf17"),)}, "unknown recipe 'bf17'"),
    ({"finetune.mode": "qat", "finetune.qat_estimator": "stee"}, "unknown finetune.qat_estimator 'stee'"),
    ({"finetune.mode": "qlora", "finetune.base_format": "int3x"}, "finetune.base_format: unknown weight format"),
])
def test_impossible_values_fail_before_start_up(tmp_path, override, message):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=message) as e:
        loop.train(smoke(**override), str(tmp_path / "run"))
    assert "\n" not in str(e.value) and time.perf_counter() - t0 < 1.0
    assert not (tmp_path / "run").exists()


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    for workdir, reason in ((tmp_path / "file", "File exists"), (tmp_path / "file" / "run", "Not a directory")):
        with pytest.raises(ConfigError, match=f"workdir '{workdir}' cannot be a run directory: {reason}"):
            loop.train(smoke(), str(workdir))


def test_a_failed_run_keeps_its_traceback_in_log_txt(tmp_path):
    run = str(tmp_path / "run")
    with pytest.raises(Exception) as e:
        loop.train(smoke(**{**SHORT, "data.source": "no_such_corpus"}), run)
    status, reason = RunDir(run).status()
    assert status == "failed" and reason.startswith(type(e.value).__name__)
    text = open(os.path.join(run, "log.txt")).read()
    assert "run failed: " in text and "Traceback (most recent call last)" in text


def test_exit_codes_of_signals():
    assert loop.exit_code({"step": 3, "interrupted": "SIGTERM"}) == 143
    assert loop.exit_code({"step": 3, "interrupted": "SIGINT"}) == 130
    assert loop.exit_code({"step": 3}) == 0


def test_ctrl_c_saves_and_stops_with_status_130(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.train", "--config", "configs/lm.py:smoke", "--workdir", str(run),
           "--config.train.steps=10000", "--config.train.log_every=1", "--config.train.eval_every=10000",
           "--config.train.checkpoint_every=10000", "--config.train.progress=False", "--config.mesh.devices=1"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not any(r.get("split") == "train" for r in read_metrics(str(run / "metrics.jsonl"))):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output[-3000:]
    status, reason = RunDir(str(run)).status()
    step = int(reason.split("at step ")[1].split(";")[0])
    assert status == "running" and reason == f"interrupted by SIGINT (exit code 130) at step {step}; rerun to resume"
    assert str(step) in os.listdir(run / "checkpoints") and f"SIGINT: saved step {step} and stopping" in output
    assert "summary: run interrupted by SIGINT at step" in output
