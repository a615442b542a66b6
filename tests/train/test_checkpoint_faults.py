"""Checkpoint faults: an unreadable checkpoint (a file truncated or missing) is skipped with one
warning and set aside, never deleted, the newest good one restores and the run saves that step
again; none readable is one clear error; a process killed mid-save leaves the previous one."""

import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import lm
from lowprec.train import loop, restore
from lowprec.train.checkpoint import UNREADABLE, CheckpointError, Checkpointer, fingerprint
from lowprec.train.rundir import RunDir, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config():
    """8 steps of the smoke model, checkpoints at 2, 4, 6, 8 (all kept)."""
    c = lm.get_config("smoke")
    c.policy = "fp32"  # compiles quickest on a CPU
    c.mesh.devices = 1
    c.train.steps, c.train.log_every, c.train.eval_every, c.train.eval_batches = 8, 2, 8, 1
    c.train.checkpoint_every, c.train.keep_checkpoints, c.train.progress = 2, 4, False
    return c


def losses(workdir):
    return [(r["step"], r["loss"]) for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run ("ref") and what a run stopped after step 6 leaves: checkpoints 2, 4,
    6 ("base": the reference without its last checkpoint; resuming drops its later records)."""
    root = tmp_path_factory.mktemp("faults")
    loop.train(config(), str(root / "ref"))
    shutil.copytree(root / "ref", root / "base")
    shutil.rmtree(root / "base" / "checkpoints" / "8")
    RunDir(str(root / "base")).set_status("running", "interrupted at step 6; rerun to resume")
    return root


def copy_base(runs, tmp_path) -> str:
    path = str(tmp_path / "run")
    shutil.copytree(runs / "base", path)
    return path


def ckpt(path, step) -> str:
    return os.path.join(path, "checkpoints", str(step))


def truncate_largest(step_dir: str) -> None:
    """Cuts the largest array file of a checkpoint to 100 bytes (a disk full or a copy cut short)."""
    largest = max(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True), key=os.path.getsize)
    os.truncate(largest, 100)


def checkpoint_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "lowprec.train.checkpoint" and r.levelno == logging.WARNING]


def test_truncated_latest_is_skipped_set_aside_and_saved_again(runs, tmp_path, caplog):
    path = copy_base(runs, tmp_path)
    truncate_largest(ckpt(path, 6))
    bad_print = fingerprint(os.path.join(path, "checkpoints"), 6)
    with caplog.at_level(logging.INFO):
        loop.train(config(), path)
    warned = checkpoint_warnings(caplog)
    assert len(warned) == 2, warned  # one for the bad checkpoint, one saying where it went
    assert warned[0].startswith("checkpoint of step 6 in ") and "is unreadable (" in warned[0]
    assert "not valid for value of size 100" in warned[0] and warned[0].endswith("trying step 4")
    assert f"set aside unreadable checkpoint of step 6 as {path}/checkpoints{UNREADABLE}/6" in warned[1]
    # One line each, never TensorStore's spec of the failed read.
    assert all("\n" not in m and len(m) < 600 for m in warned)
    assert not any("'driver'" in r.getMessage() for r in caplog.records)
    assert any(r.getMessage() == "resumed at step 4" for r in caplog.records)
    # Resumed from step 4 as if never interrupted, and done.
    assert losses(path) == losses(runs / "ref")
    assert RunDir(path).status() == ("done", "")
    # The bad checkpoint is kept, byte for byte; step 6 is a new, good checkpoint like the reference's.
    assert fingerprint(os.path.join(path, f"checkpoints{UNREADABLE}"), 6) == bad_print
    assert sorted(Checkpointer(os.path.join(path, "checkpoints")).manager.all_steps()) == [2, 4, 6, 8]
    got, want = restore.load_run(path, step=6), restore.load_run(str(runs / "ref"), step=6)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_files_fall_back_further_and_load_run_moves_nothing(runs, tmp_path, caplog):
    path = copy_base(runs, tmp_path)
    truncate_largest(ckpt(path, 6))
    os.remove(os.path.join(ckpt(path, 4), "state", "manifest.ocdbt"))  # a file missing
    with caplog.at_level(logging.WARNING):
        run = restore.load_run(path)  # read-only: skips, warns, moves nothing
    assert run.step == 2
    warned = checkpoint_warnings(caplog)
    assert [m.split(" in ")[0] for m in warned] == ["checkpoint of step 6", "checkpoint of step 4"], warned
    assert "NOT_FOUND" in warned[1] and warned[1].endswith("trying step 2")
    assert os.path.isdir(ckpt(path, 6)) and os.path.isdir(ckpt(path, 4))
    assert not os.path.exists(os.path.join(path, f"checkpoints{UNREADABLE}"))

    caplog.clear()
    loop.train(config(), path)
    assert losses(path) == losses(runs / "ref")
    assert sorted(os.listdir(os.path.join(path, f"checkpoints{UNREADABLE}"))) == ["4", "6"]
    assert not os.path.exists(os.path.join(path, f"checkpoints{UNREADABLE}", "4", "state", "manifest.ocdbt"))
    assert sorted(Checkpointer(os.path.join(path, "checkpoints")).manager.all_steps()) == [2, 4, 6, 8]


def test_no_readable_checkpoint_is_one_clear_error(runs, tmp_path):
    path = copy_base(runs, tmp_path)
    for step in (2, 4, 6):
        truncate_largest(ckpt(path, step))
    with pytest.raises(CheckpointError, match=r"restores: step 6: .*; step 4: .*; step 2: .*left in place"):
        loop.train(config(), path)
    status, reason = RunDir(path).status()
    assert status == "failed" and reason.startswith("CheckpointError: no checkpoint in ") and "\n" not in reason
    assert all(os.path.isdir(ckpt(path, s)) for s in (2, 4, 6))  # nothing moved, nothing deleted


# The training process, frozen in orbax's commit of step 6 (its files written under a temporary
# name, not yet renamed) until it is killed.
FREEZE_AT_COMMIT = """
import asyncio, os, sys
from orbax.checkpoint._src.path import atomicity
from lowprec.train import loop, restore

path = sys.argv[1]
finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def frozen(self):
    if os.path.basename(str(self._final_path)) == "6":
        open(os.path.join(path, "committing"), "w").close()
        await asyncio.sleep(600)
    return await finalize(self)

atomicity.AtomicRenameTemporaryPath.finalize = frozen
loop.train(restore.read_config(path), path)
"""


def test_sigkill_during_a_save_leaves_the_previous_checkpoint(runs, tmp_path, caplog):
    path = str(tmp_path / "run")
    RunDir(path).write_config(config().to_dict())
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-c", FREEZE_AT_COMMIT, path], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(path, "committing")) and child.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert os.path.exists(os.path.join(path, "committing")), f"the save of step 6 never began (exit {child.poll()})"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    names = sorted(os.listdir(os.path.join(path, "checkpoints")))
    assert "2" in names and "4" in names and "6" not in names, names
    assert any(n.startswith("6.orbax-checkpoint-tmp") for n in names), names  # killed mid-save
    with caplog.at_level(logging.INFO):
        loop.train(config(), path)
    assert not checkpoint_warnings(caplog)  # the unfinished save is no checkpoint: nothing to skip
    assert any(r.getMessage() == "resumed at step 4" for r in caplog.records)
    assert losses(path) == losses(runs / "ref")
    assert sorted(Checkpointer(os.path.join(path, "checkpoints")).manager.all_steps()) == [2, 4, 6, 8]
