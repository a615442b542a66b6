"""Sweeps: axes, expansion, run ids, the local runner (failures, re-runs, shared sweeps), SLURM/TPU scripts."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from launch import runner, slurm, sweep, tpu
from lowprec.train.rundir import RunDir, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP_FILE = textwrap.dedent("""
    from configs import lm
    from launch.sweep import axis

    def get_config(arg=None):
        c = lm.get_config("smoke")
        c.train.steps, c.train.log_every, c.train.eval_every = 4, 2, 4
        c.train.checkpoint_every, c.train.eval_batches, c.train.progress = 4, 1, False
        return c

    def get_sweep(arg=None):
        recipes = ["bf16", "fp8", "no_such_recipe"] if arg != "ok" else ["bf16", "fp8"]
        return axis("recipe", recipes)
""")


def env():
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    e.pop("XLA_FLAGS", None)
    return e


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "sweep_cfg.py"
    path.write_text(SWEEP_FILE)
    return str(path)


def test_axes_compose():
    grid = sweep.product(sweep.axis("recipe", ["a", "b"]), sweep.zip_axes(sweep.axis("optim.lr", [1, 2]),
                                                                           sweep.axis("optim.b1", [0.8, 0.9])),
                         sweep.seeds(2))
    assert len(grid) == 8 and grid[0] == {"recipe": "a", "optim.lr": 1, "optim.b1": 0.8, "seed": 0}
    assert grid[-1] == {"recipe": "b", "optim.lr": 2, "optim.b1": 0.9, "seed": 1}
    assert [g["seed"] for g in grid[:2]] == [0, 1]  # the last axis moves fastest
    with pytest.raises(ValueError, match="equal length"):
        sweep.zip_axes(sweep.axis("a", [1, 2]), sweep.axis("b", [1]))
    with pytest.raises(ValueError, match="two axes"):
        sweep.product(sweep.axis("a", [1]), sweep.axis("a", [2]))


def test_expand_names_runs_and_rejects_unknown_keys(spec, tmp_path):
    runs = sweep.expand(spec, str(tmp_path / "root"))
    ids = [r.id for r in runs]
    assert len(set(ids)) == 3 and ids[0].startswith("recipe-bf16-") and ids[2].startswith("recipe-no-such-recipe-")
    assert ids == [r.id for r in sweep.expand(spec, str(tmp_path / "root"))]  # stable
    assert runs[1].config.recipe == "fp8" and "--config.recipe=fp8" in runs[1].command
    assert sweep.varying_axes(runs) == ["recipe"]
    base = runs[0].config
    with pytest.raises(KeyError, match="known: .*steps"):
        sweep.apply_overrides(base, {"train.stepz": 3})
    with pytest.raises(KeyError, match="has no key 'nope'"):
        sweep.apply_overrides(base, {"nope": 1})


def test_dry_run_prints_commands(spec, tmp_path, capsys):
    assert sweep.main([spec, "--root", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 runs" in out and out.count("-m experiments.train") == 3 and "--config.recipe=fp8" in out
    assert not (tmp_path / "r").exists()


def _sweep(spec, root, *extra, wait=True):
    cmd = [sys.executable, "-m", "launch.sweep", spec, "--root", root, "--refresh", "1", *extra]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return p
    out, _ = p.communicate(timeout=600)
    return p.returncode, out


def _starts(run_path):
    log = os.path.join(run_path, "runner.log")
    return open(log).read().count("started") if os.path.exists(log) else 0


def test_sweep_end_to_end_failure_rerun(spec, tmp_path):
    root = str(tmp_path / "sweep")
    rc, out = _sweep(spec, root, "--parallel", "2")
    runs = sweep.expand(spec, root)
    assert rc == 1, out
    status = {r.id: RunDir(r.path).status() for r in runs}
    assert [status[r.id][0] for r in runs] == ["done", "done", "failed"], out
    assert "no_such_recipe" in status[runs[2].id][1]  # the trainer's error is the reason
    assert "[sweep] done" in out and "FAILED" in out
    manifest = sweep.read_manifest(root)
    assert [m["id"] for m in manifest["runs"]] == [r.id for r in runs] and manifest["axes"] == ["recipe"]
    done_metrics = open(os.path.join(runs[0].path, "metrics.jsonl")).read()
    assert read_metrics(os.path.join(runs[0].path, "metrics.jsonl"))[-1]["step"] == 4

    rc, out = _sweep(spec, root, "--parallel", "2")  # done runs skipped, the failed one retried
    assert rc == 1 and "2 already done" in out
    assert [_starts(r.path) for r in runs] == [1, 1, 2]
    assert open(os.path.join(runs[0].path, "metrics.jsonl")).read() == done_metrics
    rc, out = _sweep(spec, root, "--no-retry-failed")
    assert rc == 1 and "failed" in out and [_starts(r.path) for r in runs] == [1, 1, 2]  # left alone, still reported


def test_two_runners_share_a_sweep(spec, tmp_path):
    root = str(tmp_path / "shared")
    a = _sweep(spec + ":ok", root, "--parallel", "1", wait=False)
    b = _sweep(spec + ":ok", root, "--parallel", "1", wait=False)
    outs = [p.communicate(timeout=600)[0] for p in (a, b)]
    runs = sweep.expand(spec + ":ok", root)
    assert [RunDir(r.path).status()[0] for r in runs] == ["done", "done"], outs
    assert [_starts(r.path) for r in runs] == [1, 1], outs
    assert not any(os.path.exists(os.path.join(r.path, runner.CLAIM)) for r in runs)


def test_stale_claim_is_taken_over_and_live_claim_is_not(tmp_path):
    path = str(tmp_path / "run")
    os.makedirs(path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(os.path.join(path, runner.CLAIM), "w") as f:
        json.dump({"host": runner.socket.gethostname(), "pid": dead.pid, "time": 0}, f)
    assert runner.claim(path)  # stale: its process is gone
    assert not runner.claim(path)  # now ours, live
    runner.release(path)
    assert runner.claim(path)


def test_slots_from_devices():
    assert runner.slots(None, "0,1,2,3") == ["0", "1", "2", "3"]
    assert runner.slots(4, "0,1") == ["0", "1", "0", "1"]
    assert runner.slots(2, "") == [None, None] or runner.local_gpus()
    with pytest.raises(ValueError, match="--parallel"):
        runner.slots(0, "0")


def test_slurm_array_task_runs_its_run(spec, tmp_path):
    root = str(tmp_path / "slurm")
    script = slurm.array_script(spec + ":ok", root, 2, partition="gpu", account="acct")
    assert "#SBATCH --array=0-1" in script and "#SBATCH --partition=gpu" in script
    line = [l for l in script.splitlines() if "launch.sweep" in l][0]
    assert "--worker $SLURM_ARRAY_TASK_ID --num-workers 2 --parallel 1" in line
    cmd = line.replace("python -m", f"{sys.executable} -m").replace("$SLURM_ARRAY_TASK_ID", "1")
    subprocess.run(cmd, shell=True, cwd=ROOT, env=env(), check=True, capture_output=True, timeout=600)
    runs = sweep.expand(spec + ":ok", root)
    assert [RunDir(r.path).status()[0] for r in runs] == [None, "done"]  # task 1 ran run 1 only
    multi = slurm.multinode_script(spec, root, runs, nodes=2)
    assert "#SBATCH --nodes=2" in multi and multi.count("srun --nodes=2") == 2 and runs[0].id in multi


def test_tpu_commands(spec, tmp_path):
    runs = sweep.expand(spec, str(tmp_path / "t"))
    lines = tpu.commands(spec, "gs-mount/runs", [r.id for r in runs], name="pod", zone="us-central2-b",
                         repo_url="https://example.org/lowprec.git", create=True, accelerator="v4-32")
    assert lines[0].startswith("gcloud compute tpus tpu-vm create pod") and "--accelerator-type=v4-32" in lines[0]
    assert all("--worker=all" in l for l in lines[1:]) and "pip install -e ." in lines[1]
    assert len(lines) == 2 + len(runs) and runs[2].id in lines[-1] and "launch.sweep" in lines[-1]
