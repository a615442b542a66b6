"""Two CPU processes (2 devices each) through jax.distributed, as a cluster runs them: they train
one model; stopped together by SIGTERM and restarted they resume with the losses of an
uninterrupted run; a process killed makes the other exit with a clear error, not hang."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lowprec.train import distributed
from lowprec.train.rundir import RunDir, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 24
FLAGS = [f"--config.train.steps={STEPS}", "--config.train.log_every=2", f"--config.train.eval_every={STEPS}",
         "--config.train.eval_batches=1", "--config.train.checkpoint_every=100", "--config.train.progress=False",
         "--config.policy=fp32"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, **env_extra) -> list[subprocess.Popen]:
    """Both processes of one run; each one's output goes to ``<workdir>.out<i>``."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               LOWPREC_COORDINATOR=f"127.0.0.1:{free_port()}", LOWPREC_NUM_PROCESSES="2", PYTHONPATH=ROOT,
               **env_extra)
    cmd = [sys.executable, "-m", "experiments.train", "--config", "configs/lm.py:smoke", "--workdir", str(workdir),
           *FLAGS]
    return [subprocess.Popen(cmd, cwd=ROOT, env=dict(env, LOWPREC_PROCESS_ID=str(i)),
                             stdout=open(f"{workdir}.out{i}", "w"), stderr=subprocess.STDOUT) for i in range(2)]


def losses(workdir, split="train"):
    return [(r["step"], r["loss"]) for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == split]


def wait(procs, timeout=300) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def output(workdir, i) -> str:
    return open(f"{workdir}.out{i}", errors="replace").read()


def wait_for_step(workdir, step, procs, timeout=300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if any(r["step"] >= step for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))):
            return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in {workdir}: exit codes {[p.poll() for p in procs]}\n"
                         + output(workdir, 0)[-3000:])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mp") / "run"
    codes = wait(launch(workdir))
    assert codes == [0, 0], output(workdir, 0)[-3000:] + output(workdir, 1)[-3000:]
    assert "process 0 of 2" in output(workdir, 0) and "process 1 of 2" in output(workdir, 1)
    return workdir


def test_sigterm_to_both_then_restart_resumes_as_uninterrupted(uninterrupted, tmp_path):
    """(That two processes train the model one process does: tests/train/test_train.py.)"""
    workdir = tmp_path / "run"
    procs = launch(workdir)
    wait_for_step(workdir, 4, procs)
    for p in procs:  # as a scheduler does: each process gets its own signal, at its own step
        p.send_signal(signal.SIGTERM)
    wait(procs)
    status, reason = RunDir(str(workdir)).status()
    assert status == "running" and "interrupted" in reason, (status, reason, output(workdir, 0)[-3000:])
    saved = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
    assert len(saved) == 1 and 4 <= saved[0] < STEPS and saved[0] % 2 == 0, saved  # one step, agreed on
    for i in range(2):
        assert f"saved step {saved[0]} and stopping" in output(workdir, i), output(workdir, i)[-3000:]

    codes = wait(launch(workdir))
    assert codes == [0, 0], output(workdir, 0)[-3000:]
    assert f"resumed at step {saved[0]}" in output(workdir, 0)
    assert RunDir(str(workdir)).status() == ("done", "")
    assert losses(workdir) == losses(uninterrupted)
    assert losses(workdir, "val") == losses(uninterrupted, "val")


@pytest.mark.parametrize("fault,victim", [("SIGSTOP", 1), ("SIGKILL", 1), ("SIGKILL", 0)])
def test_a_lost_process_makes_the_other_exit_with_a_clear_error(tmp_path, fault, victim):
    """SIGSTOP (a hung host: its connections stay open) leaves process 0 in a collective that
    never returns: the watchdog ends it after the timeout, STATUS naming process 1. SIGKILL of
    process 1 closes its connections: the collective raises at once, and the watchdog ends
    process 0 where it would wait for process 1 at exit. Process 0 killed takes the
    coordination service with it: JAX's runtime ends process 1 ("another task died"); STATUS,
    which process 0 writes, stays running (the runner records the exit code)."""
    workdir = tmp_path / "run"
    timeout = 5
    procs = launch(workdir, LOWPREC_PEER_TIMEOUT_S=str(timeout))
    try:
        wait_for_step(workdir, 2, procs)
        procs[victim].send_signal(getattr(signal, fault))
        survivor = 1 - victim
        start = time.time()
        code = wait([procs[survivor]], timeout=timeout + 60)[0]
        took = time.time() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    out = output(workdir, survivor)
    assert code != 0 and took < timeout + 30, (code, took, out[-3000:])
    status, reason = RunDir(str(workdir)).status()
    assert status == ("failed" if victim == 1 else "running"), (status, reason)  # process 0 writes STATUS
    if victim == 1:
        assert code == distributed.EXIT_PEER_LOST and took >= timeout - 1, (code, took, out[-3000:])
        lost = "lost a peer: process 1 of 2 has sent no heartbeat for"
        assert out.count(lost) == 1, out[-3000:]
        if fault == "SIGSTOP":  # in the collective, still training: STATUS and log.txt say so
            assert reason.startswith(lost), reason
            assert sum(lost in line for line in open(workdir / "log.txt")) == 1
    else:
        assert "another task died" in out or "lost a peer: the coordinator" in out, out[-3000:]
