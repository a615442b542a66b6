"""The local runner: a sweep end to end with a failing run, re-runs, runners sharing a sweep, claims."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from launch import runner, sweep
from lowprec.train.rundir import RunDir, read_metrics


def test_sweep_end_to_end_failure_then_rerun(spec, tmp_path, launch, starts, in_repo, capsys):
    root = str(tmp_path / "sweep")
    runs = sweep.expand(spec, root)
    rc, out = launch(spec, root, "--parallel", "2")
    assert rc == 1, out
    assert [RunDir(r.path).status()[0] for r in runs] == ["done", "done", "failed"], out
    assert "has 3 devices; there are 1" in RunDir(runs[2].path).status()[1]  # the trainer's own reason
    assert "done 2 | running 0 | failed 1 | queued 0" in out and f"FAILED {runs[2].id}" in out
    assert [starts(r.path) for r in runs] == [1, 1, 1]
    assert not any(os.path.exists(os.path.join(r.path, runner.CLAIM)) for r in runs)
    for r in runs[:2]:
        assert read_metrics(os.path.join(r.path, "metrics.jsonl"))[-1]["step"] == 4
        assert "step 4" in open(os.path.join(r.path, "stdout.txt")).read()  # the trainer's output lands there
    manifest = sweep.read_manifest(root)
    assert [m["id"] for m in manifest["runs"]] == [r.id for r in runs]
    assert manifest["axes"] == ["recipe", "mesh.data"] and manifest["config"] == spec
    assert manifest["git"] and all(f"at git {manifest['git']}" in open(os.path.join(r.path, "runner.log")).read()
                                   for r in runs)  # each run's start names the code it ran
    metrics = os.path.join(runs[0].path, "metrics.jsonl")
    before = (open(metrics).read(), os.stat(metrics).st_mtime_ns)

    # Again (in this process): the done runs are skipped, the failed one is retried and fails again.
    assert sweep.main([spec, "--root", root, "--parallel", "2", "--refresh", "1"]) == 1
    out = capsys.readouterr().out
    assert "3 runs: 2 already done, 1 to run" in out and f"FAILED {runs[2].id}" in out
    assert [starts(r.path) for r in runs] == [1, 1, 2]
    assert (open(metrics).read(), os.stat(metrics).st_mtime_ns) == before
    assert RunDir(runs[2].path).status()[0] == "failed"

    # Without retries the failed run is left alone but still reported.
    assert sweep.main([spec, "--root", root, "--no-retry-failed"]) == 1
    out = capsys.readouterr().out
    assert "3 already done or failed, 0 to run" in out
    assert [starts(r.path) for r in runs] == [1, 1, 2]
    table = out[out.index("\nrun ") + 1:].splitlines()
    assert [line.split()[-1] for line in table[1:]] == ["done", "done", "failed"]


def test_two_runners_never_run_a_run_twice(spec, tmp_path, launch, starts):
    """Both runners go through the same four (quickly failing) runs; claims split them, and a run
    the other runner failed meanwhile is not retried in the same pass."""
    root = str(tmp_path / "shared")
    procs = [launch(spec + ":bad", root, "--parallel", "1", wait=False) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    runs = sweep.expand(spec + ":bad", root)
    assert [starts(r.path) for r in runs] == [1, 1, 1, 1], outs
    for r, n in zip(runs, [3, 5, 6, 7], strict=True):
        status, reason = RunDir(r.path).status()
        assert status == "failed" and f"has {n} devices; there are 1" in reason, outs
        assert not os.path.exists(os.path.join(r.path, runner.CLAIM))
    assert all(p.returncode == 1 for p in procs), outs


def _script_run(tmp_path, name, code):
    path = str(tmp_path / name)
    return sweep.Run(name, {}, None, [sys.executable, "-c", code, path], path)


def test_a_run_that_dies_without_status_is_marked_failed(tmp_path, in_repo, capsys):
    dies = _script_run(tmp_path, "dies", "import os; print('partial output', flush=True); os._exit(3)")
    ok = _script_run(tmp_path, "ok", "import os, sys; open(os.path.join(sys.argv[1], 'STATUS'), 'w').write('done\\n')")
    os.makedirs(dies.path)
    RunDir(dies.path).set_status("failed", "an earlier attempt's reason")
    assert runner.Runner([dies, ok], [None, None], refresh=0.5).run() == 1
    status, reason = RunDir(dies.path).status()
    assert status == "failed" and reason.startswith("exit code 3") and "partial output" in reason
    assert "earlier attempt" not in reason
    assert RunDir(ok.path).status()[0] == "done"  # a failure does not stop the others
    out = capsys.readouterr().out
    assert "dies  failed" in out and "ok    done" in out


_STOPPED = (  # a trainer stopped by a signal: STATUS replaced with its reason, then exit 143
    "import os, signal, sys, time\n"
    "def stop(signum, frame):\n"
    "    tmp = os.path.join(sys.argv[1], 'STATUS.tmp')\n"
    "    open(tmp, 'w').write('running\\ninterrupted by SIGTERM at step 4; rerun to resume\\n')\n"
    "    os.replace(tmp, os.path.join(sys.argv[1], 'STATUS'))\n"
    "    sys.exit(143)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "open(os.path.join(sys.argv[1], 'ready'), 'w').close()\n"
    "time.sleep(60)\n")


def test_a_run_stopped_by_a_signal_keeps_its_status(tmp_path, in_repo):
    """Exit 143 (130) with STATUS "running, interrupted by ..." written by the run is no failure:
    the runner that stopped it keeps that STATUS; an old such STATUS left by an earlier attempt
    does not excuse a run that dies now without writing one."""
    stopped = _script_run(tmp_path, "stopped", _STOPPED)
    dies = _script_run(tmp_path, "dies", "import os; os._exit(143)")
    for r in (stopped, dies):
        os.makedirs(r.path)
    RunDir(dies.path).set_status("running", "interrupted by SIGTERM at step 2; rerun to resume")
    assert runner.Runner([dies], [None], refresh=0.5).run() == 1
    status, reason = RunDir(dies.path).status()
    assert status == "failed" and reason.startswith("exit code 143"), (status, reason)

    r = runner.Runner([stopped], [None], refresh=0.5)
    def stop_when_ready():  # as the runner's SIGTERM handler does, once the run is up
        while not os.path.exists(os.path.join(stopped.path, "ready")):
            time.sleep(0.05)
        r._stop = True
    threading.Thread(target=stop_when_ready, daemon=True).start()
    assert r.run() == 1  # the runner itself was stopped
    assert RunDir(stopped.path).status() == ("running", "interrupted by SIGTERM at step 4; rerun to resume")
    assert r.outcome[stopped.id] == "interrupted (resumes when re-run)"
    assert "ended with exit code 143, STATUS running" in open(os.path.join(stopped.path, "runner.log")).read()
    assert not os.path.exists(os.path.join(stopped.path, runner.CLAIM))


def test_a_failed_backend_start_is_retried_then_reported(tmp_path, in_repo, monkeypatch):
    """Several processes starting CUDA on one GPU at once can fail to initialize it: such a run
    starts again (twice at most); any other failure is final."""
    monkeypatch.setattr(runner, "START_RETRY_DELAY_S", 0.0)
    flaky = _script_run(tmp_path, "flaky", (
        "import os, sys; n = os.path.join(sys.argv[1], 'tries'); k = len(open(n).read()) if os.path.exists(n) else 0\n"
        "open(n, 'a').write('x')\n"
        "if k == 0: sys.exit(\"RuntimeError: Unable to initialize backend 'cuda': INTERNAL: no supported devices\")\n"
        "open(os.path.join(sys.argv[1], 'STATUS'), 'w').write('done\\n')"))
    never = _script_run(tmp_path, "never", "import sys; sys.exit(\"Unable to initialize backend 'cuda'\")")
    broken = _script_run(tmp_path, "broken", "import sys; sys.exit('ValueError: a real bug')")
    for r in (flaky, never, broken):
        os.makedirs(r.path)
    assert runner.Runner([flaky, never, broken], [None], refresh=0.5).run() == 1
    assert RunDir(flaky.path).status()[0] == "done" and open(os.path.join(flaky.path, "tries")).read() == "xx"
    assert RunDir(never.path).status()[0] == "failed"
    assert open(os.path.join(never.path, "runner.log")).read().count("started on slot") == 1 + runner.START_RETRIES
    assert open(os.path.join(broken.path, "runner.log")).read().count("started on slot") == 1


def test_a_run_another_runner_failed_meanwhile_is_not_retried(tmp_path, in_repo, starts):
    """Retrying a failed run means one retry per pass, not one per runner sharing the sweep."""
    other = _script_run(tmp_path, "other", "")
    os.makedirs(other.path)
    RunDir(other.path).set_status("failed", "before this pass")
    # The first run, while it runs, stands for a second runner that retries `other` and fails.
    code = ("from lowprec.train.rundir import RunDir; "
            f"RunDir({other.path!r}).set_status('failed', 'in this pass')")
    first = _script_run(tmp_path, "first", code)
    assert runner.Runner([first, other], [None], refresh=0.5).run() == 1
    assert starts(first.path) == 1 and starts(other.path) == 0
    assert RunDir(other.path).status() == ("failed", "in this pass")
    assert runner.Runner([other], [None], refresh=0.5).run() == 1  # the next pass retries it
    assert starts(other.path) == 1


def test_claims_are_atomic_and_stale_ones_taken_over(tmp_path):
    path = str(tmp_path / "run")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.makedirs(path)
    with open(os.path.join(path, runner.CLAIM), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "time": 0}, f)
    assert runner.claim(path)  # stale: its process is gone
    assert runner.read_claim(path)["pid"] == os.getpid()
    assert not runner.claim(path)  # now held by a live process (this one)
    runner.release(path)
    assert runner.claim(path)
    runner.release(path)
    with open(os.path.join(path, runner.CLAIM), "w") as f:  # its runner is gone, its training is not
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "child": os.getpid(), "time": 0}, f)
    assert not runner.claim(path)
    runner.note_child(path, dead.pid)
    assert runner.read_claim(path)["child"] == dead.pid and runner.read_claim(path)["pid"] == dead.pid
    assert runner.claim(path)  # both gone
    runner.release(path)
    with open(os.path.join(path, runner.CLAIM), "w") as f:  # another host's: never taken over
        json.dump({"host": socket.gethostname() + "-elsewhere", "pid": dead.pid, "time": 0}, f)
    assert not runner.claim(path)


def test_slots(monkeypatch):
    assert runner.slots(None, "0,1,2,3") == ["0", "1", "2", "3"]
    assert runner.slots(4, "0,1") == ["0", "1", "0", "1"]
    assert runner.slots(None, "0,1,2,3", gpus_per_run=2) == ["0,1", "2,3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")  # a scheduler's allocation
    assert runner.slots(None, None) == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runner.slots(2, None) == [None, None]
    assert runner.slots(None, None) == [None]
    with pytest.raises(ValueError, match="--parallel"):
        runner.slots(0, "0")
    with pytest.raises(ValueError, match="--gpus-per-run 2 does not divide"):
        runner.slots(None, "0,1,2", gpus_per_run=2)


def test_last_train_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": 2, "split": "train", "loss": 3.5}, {"step": 2, "split": "val", "loss": 3.9},
               {"step": 4, "split": "train", "loss": 3.25}, {"step": 4, "split": "val", "loss": 3.6}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 6, "spl')  # a line being written
    assert runner.last_train_record(str(tmp_path)) == records[2]
    assert runner.last_train_record(str(tmp_path / "missing")) is None


def test_progress_of_a_seed_group_shows_each_seed(tmp_path):
    group = tmp_path / "group"
    for name, loss in (("seed-0", 3.5), ("seed-1", 3.25)):
        (group / name).mkdir(parents=True)
        (group / name / "metrics.jsonl").write_text(json.dumps({"step": 8, "split": "train", "loss": loss}) + "\n")
    (group / "seeds.json").write_text(json.dumps({"seeds": [0, 1], "dirs": ["seed-0", "seed-1"]}))
    assert runner._progress("g", runner.progress_records(str(group))) == "g step 8 loss 3.5/3.25"
    (group / "seed-1" / "metrics.jsonl").unlink()  # one seed has no record yet
    assert runner._progress("g", runner.progress_records(str(group))) == "g starting"
    assert runner.progress_records(str(group / "seed-0")) == [{"step": 8, "split": "train", "loss": 3.5}]


def test_start_within_leaves_later_runs_queued(tmp_path, in_repo, capsys):
    code = "import os, sys, time; time.sleep(1.5); open(os.path.join(sys.argv[1], 'STATUS'), 'w').write('done\\n')"
    runs = [_script_run(tmp_path, f"r{i}", code) for i in range(3)]
    for r in runs:
        os.makedirs(r.path)
    assert runner.Runner(runs, [None], refresh=0.5, start_within=0.5).run() == 1  # the sweep is unfinished
    assert [RunDir(r.path).status()[0] for r in runs] == ["done", None, None]  # the running one finished
    out = capsys.readouterr().out
    assert [line.split(maxsplit=1) for line in out.splitlines()[-3:]] == \
        [["r0", "done"], ["r1", "not started"], ["r2", "not started"]]
    assert runner.Runner(runs, [None, None], refresh=0.5).run() == 0  # a later pass takes the rest


def test_a_sweep_of_seed_groups_trains_and_reads_back_as_runs(spec, tmp_path, launch):
    from experiments.reporting import load

    root = str(tmp_path / "groups")
    rc, out = launch(spec + ":seeds", root, "--parallel", "2", "--seeds-per-process", "2")
    assert rc == 0, out
    group, alone, _ = sweep.expand(spec + ":seeds", root, seeds_per_process=2)
    assert json.load(open(os.path.join(group.path, "seeds.json")))["seeds"] == [0, 1]
    assert RunDir(group.path).status()[0] == "done"
    swept = load.load(root)
    assert [(r.id, r.value("seed"), r.status) for r in swept.runs] == [
        (f"{group.id}/seed-0", 0, "done"), (f"{group.id}/seed-1", 1, "done"), (alone.id, 2, "done"),
        (swept.runs[3].id, 5, "done")]
    assert "seed" in swept.axes and all(r.val and r.val[-1]["step"] == 4 for r in swept.runs)
    # The group's seeds trained as they would alone: seed 0 in the group is the grouped config's seed.
    assert [json.load(open(os.path.join(group.path, d, "config.json")))["seed"] for d in ("seed-0", "seed-1")] == [0, 1]


def test_a_run_killed_after_it_finished_stays_done(tmp_path, in_repo, capsys):
    code = ("import os, signal, sys; open(os.path.join(sys.argv[1], 'STATUS'), 'w').write('done\\n'); "
            "os.kill(os.getpid(), signal.SIGTERM)")  # e.g. a stop while the finished trainer closes down
    finished = _script_run(tmp_path, "finished", code)
    os.makedirs(finished.path)
    assert runner.Runner([finished], [None], refresh=0.5).run() == 0
    assert RunDir(finished.path).status()[0] == "done"
    assert "ended with exit code -15, STATUS done" in open(os.path.join(finished.path, "runner.log")).read()
