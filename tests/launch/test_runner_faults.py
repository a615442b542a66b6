"""Runners that die or race: a runner killed mid-run (SIGKILL, with its training process) leaves
a stale claim that the next runner takes over, and the run resumes from its checkpoint; two
runners on one sweep train each run exactly once; claims taken over under a race have one
winner; dead owners are recognised (zombies, reused pids, claims left empty)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

from launch import runner, sweep
from lowprec.train.rundir import RunDir, read_metrics

SWEEP_FILE = textwrap.dedent("""
    from configs import lm
    from launch.sweep import axis

    def get_config(arg=None):
        c = lm.get_config("smoke")
        c.policy = "fp32"  # compiles quickest on a CPU
        c.train.steps, c.train.log_every, c.train.eval_every = 40, 2, 40
        c.train.checkpoint_every, c.train.eval_batches, c.train.progress = 4, 1, False
        return c

    def get_sweep(arg=None):
        if arg == "two":
            return [{"seed": 0, "train.steps": 6}, {"seed": 1, "train.steps": 6}]
        return axis("seed", [0])
""")


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "faults_cfg.py"
    path.write_text(SWEEP_FILE)
    return str(path)


def train_steps(run_path) -> list[int]:
    return [r["step"] for r in read_metrics(os.path.join(run_path, "metrics.jsonl")) if r["split"] == "train"]


def saved_steps(run_path) -> list[int]:
    ckpts = os.path.join(run_path, "checkpoints")
    return sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []


def test_a_killed_runner_is_taken_over_and_its_run_resumes(spec, tmp_path, launch, starts):
    root = str(tmp_path / "sweep")
    (run,) = sweep.expand(spec, root)
    first = launch(spec, root, "--parallel", "1", wait=False)
    deadline = time.time() + 240
    while not saved_steps(run.path) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    owner = runner.read_claim(run.path)
    assert first.poll() is None and saved_steps(run.path) and owner and "child" in owner, first.poll()
    first.kill()  # the runner first (else it would record its child's death), then its training process
    first.wait()
    os.killpg(owner["child"], signal.SIGKILL)  # the trainer runs in its own session
    deadline = time.time() + 30
    while runner._alive(owner["child"], owner.get("child_started")) and time.time() < deadline:
        time.sleep(0.05)
    assert RunDir(run.path).status()[0] == "running"  # nobody recorded the end
    assert runner.read_claim(run.path) == owner  # the dead runner's claim is still there
    resumed_from = saved_steps(run.path)[-1]
    assert resumed_from < 40

    rc, out = launch(spec, root, "--parallel", "1")
    assert rc == 0, out
    assert "taking over the stale claim" in out, out
    assert RunDir(run.path).status() == ("done", "")
    assert starts(run.path) == 2
    assert f"resumed at step {resumed_from}" in open(os.path.join(run.path, "stdout.txt")).read()
    assert train_steps(run.path) == list(range(2, 41, 2))  # each step once: the record was cut back
    assert not os.path.exists(os.path.join(run.path, runner.CLAIM))


def test_two_racing_runners_train_each_run_exactly_once(spec, tmp_path, launch, starts):
    root = str(tmp_path / "shared")
    procs = [launch(spec + ":two", root, "--parallel", "1", wait=False) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = sweep.expand(spec + ":two", root)
    for r in runs:
        assert starts(r.path) == 1, outs
        assert RunDir(r.path).status() == ("done", ""), outs
        assert train_steps(r.path) == [2, 4, 6], outs
        assert not os.path.exists(os.path.join(r.path, runner.CLAIM))


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def _write_claim(path, **record):
    with open(os.path.join(path, runner.CLAIM), "w") as f:
        json.dump({"host": socket.gethostname(), "time": 0, **record}, f)


def test_runners_racing_for_a_stale_claim_have_one_winner(tmp_path):
    """Eight processes find one stale claim at the same moment: the lock lets exactly one take it."""
    path = str(tmp_path / "run")
    os.makedirs(path)
    _write_claim(path, pid=_dead_pid())
    go = time.time() + 0.5
    results, hold = os.pipe(), os.pipe()  # winners stay alive (a dead winner's claim is stale) until all tried
    children = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # os.fork() in a process that imported JAX: the child runs no JAX
        for _ in range(8):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                try:
                    os.close(hold[1])
                    read = runner.read_claim
                    runner.read_claim = lambda p: (read(p), time.sleep(0.1))[0]  # a wide window between check and take
                    time.sleep(max(0.0, go - time.time()))
                    os.write(results[1], b"1" if runner.claim(path) else b"0")
                    os.read(hold[0], 1)  # until the parent closes its end
                    os._exit(0)
                finally:
                    os._exit(2)
            children.append(pid)
    os.close(hold[0])
    os.close(results[1])
    got = b""
    while len(got) < 8 and (chunk := os.read(results[0], 8)):
        got += chunk
    claimer = runner.read_claim(path)["pid"]
    os.close(hold[1])
    assert [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children] == [0] * 8
    assert sorted(got) == sorted(b"10000000"), got
    assert claimer in children


def test_dead_owners_are_recognised(tmp_path):
    path = str(tmp_path / "run")
    os.makedirs(path)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not reaped until below
    deadline = time.time() + 30
    while runner._stat(zombie.pid)[0] != "Z" and time.time() < deadline:
        time.sleep(0.05)
    _write_claim(path, pid=zombie.pid)
    assert runner.claim(path)  # a zombie is no owner
    zombie.wait()
    runner.release(path)
    _write_claim(path, pid=os.getpid(), started="1")  # this pid, but a process that started at another time
    assert runner.claim(path)
    assert runner.read_claim(path)["started"] == runner._started(os.getpid())
    assert not runner.claim(path)  # the live owner's claim (same pid, same start) holds
    runner.release(path)
    open(os.path.join(path, runner.CLAIM), "w").close()  # a runner killed while writing its claim
    assert not runner.claim(path)  # ... or one writing it now: left alone while fresh
    old = time.time() - runner.EMPTY_CLAIM_STALE_S - 1
    os.utime(os.path.join(path, runner.CLAIM), (old, old))
    assert runner.claim(path)
