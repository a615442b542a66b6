"""The local runner: a sweep's runs as subprocesses, N at a time, each pinned to its GPU slot.

Claims make runners share a sweep safely: a run is taken by creating ``<run>/.claim`` with
``O_CREAT | O_EXCL`` (host, pid, time) and released when it ends; a claim left by a dead
process of this host (its runner and its training process both gone or zombies; processes are
told apart by pid and start time, so a reused pid is no owner) is stale and taken over under a
lock (``<run>/.claim.lock``, flock), so that two runners never both take it; a claim left empty
by a runner killed while writing it is stale after ``EMPTY_CLAIM_STALE_S``. Each run's output
goes to ``<run>/stdout.txt``, and ``<run>/runner.log`` records every start and end. A run whose
process dies without writing its STATUS is marked ``failed`` with the exit code and the
output's last lines; one stopped by a signal (SIGTERM: exit 143, SIGINT: 130) keeps its STATUS
(running, "interrupted by ..."): it resumes when re-run.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from lowprec.train.rundir import RunDir

CLAIM = ".claim"
EMPTY_CLAIM_STALE_S = 60.0  # an empty claim this old was left by a runner killed while writing it
STOP_GRACE_S = 120  # how long stopped runs get to save their checkpoint before they are killed
# A run whose accelerator backend failed to start is started again this many times, after a pause.
START_FAILURES = ("Unable to initialize backend 'cuda'", "Unable to initialize backend 'rocm'")
START_RETRIES = 2
START_RETRY_DELAY_S = 10.0

log = logging.getLogger(__name__)


# ---- GPU slots ----
def local_gpus() -> tuple[list[str], str]:
    """This process's GPUs and where the list came from: ``$CUDA_VISIBLE_DEVICES`` (a scheduler's
    allocation, e.g. SLURM's) when set, else ``nvidia-smi -L``; empty without either."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()], "$CUDA_VISIBLE_DEVICES"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return [], "no nvidia-smi"
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")], "nvidia-smi -L"


def slots(parallel: int | None, devices: str | None, gpus_per_run: int = 1) -> list[str | None]:
    """One entry per concurrent run: the ``CUDA_VISIBLE_DEVICES`` it gets (None: CPU, unpinned).

    GPUs come from ``devices`` ("0,1,2,3") or :func:`local_gpus`, grouped ``gpus_per_run`` at a
    time; ``parallel`` defaults to the number of groups and, when larger, slots share groups
    round-robin.
    """
    if parallel is not None and parallel < 1:
        raise ValueError(f"--parallel must be >= 1; got {parallel}")
    if gpus_per_run < 1:
        raise ValueError(f"--gpus-per-run must be >= 1; got {gpus_per_run}")
    if devices:
        gpus, source = [d.strip() for d in devices.split(",") if d.strip()], "--devices"
    else:
        gpus, source = local_gpus()
    if not gpus:
        log.info("no GPUs (%s): %d run(s) at a time, unpinned", source, parallel or 1)
        return [None] * (parallel or 1)
    if len(gpus) % gpus_per_run:
        raise ValueError(f"--gpus-per-run {gpus_per_run} does not divide the {len(gpus)} GPUs {gpus} ({source})")
    groups = [",".join(gpus[i:i + gpus_per_run]) for i in range(0, len(gpus), gpus_per_run)]
    n = parallel or len(groups)
    out = [groups[i % len(groups)] for i in range(n)]
    log.info("GPUs from %s: %d slot(s) %s", source, n, out)
    return out


# ---- claims ----
def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of process ``pid`` from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _started(pid: int) -> str | None:
    """When process ``pid`` started, or None where unknown: with the pid it identifies a process
    even after the pid is reused."""
    stat = _stat(pid)
    return stat[1] if stat else None


def _alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` (started at ``started``, where known) still runs: a zombie (killed,
    not yet reaped, e.g. orphaned in a container whose init reaps nothing) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        pass
    stat = _stat(pid)
    if stat is None:  # no /proc: the pid is all there is to go by
        return True
    return stat[0] not in ("Z", "X") and (started is None or stat[1] == started)  # else another process


def claim(run_path: str) -> bool:
    """Atomically claims the run for this process; takes over a stale claim: one of this host
    whose runner and training processes are both gone, or one left empty (its runner died while
    writing it) for ``EMPTY_CLAIM_STALE_S``. Runners of this host check and take over under a
    lock, so two finding one stale claim never both win."""
    os.makedirs(run_path, exist_ok=True)
    path = os.path.join(run_path, CLAIM)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _stale(run_path, path):
                return False
            try:  # its owner may release it meanwhile (release takes no lock)
                os.remove(path)
            except FileNotFoundError:
                pass
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:  # a runner that takes no lock (another host, an older version)
                return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": _started(os.getpid()),
                       "time": time.time()}, f)
    return True


def _stale(run_path: str, path: str) -> bool:
    """Whether the existing claim at ``path`` may be taken over (logged either way)."""
    owner = read_claim(run_path)
    name = os.path.basename(run_path)
    if owner is None:  # being written right now, or its runner died while writing it
        try:
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return True
        if age < EMPTY_CLAIM_STALE_S:
            return False
        log.info("taking over the empty claim of %s (left %.0f s ago)", run_path, age)
        return True
    alive = [int(owner[k]) for k in ("pid", "child") if int(owner.get(k, -1)) > 0
             and _alive(int(owner[k]), owner.get("started" if k == "pid" else "child_started"))]
    if owner.get("host") != socket.gethostname() or alive:
        log.info("%s is claimed by %s pid %s since %s (if that runner is gone, delete %s)", name, owner.get("host"),
                 owner.get("pid"), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("time", 0))), path)
        return False
    log.info("taking over the stale claim of %s (its runner pid %s and training pid %s of this host are gone)",
             run_path, owner.get("pid"), owner.get("child"))
    return True


def note_child(run_path: str, child_pid: int) -> None:
    """Adds the training process to this runner's claim: a training process that outlives its
    runner (killed with SIGKILL) keeps the claim alive, so no second runner starts the run."""
    path = os.path.join(run_path, CLAIM)
    record = dict(read_claim(run_path) or {}, child=child_pid, child_started=_started(child_pid))
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)  # the claim file exists throughout, so O_EXCL claims still fail


def read_claim(run_path: str) -> dict | None:
    """The claim's record (host, pid, time), or None when there is none (or it is half written)."""
    try:
        with open(os.path.join(run_path, CLAIM)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def release(run_path: str) -> None:
    try:  # the lock file stays: removing it could give two runners two different locks
        os.remove(os.path.join(run_path, CLAIM))
    except FileNotFoundError:
        pass


# ---- reading a run ----
def status_stamp(run_path: str) -> tuple | None:
    """Identifies the current STATUS file (it is replaced, never edited): a later different stamp
    means someone wrote it since. Compares no clocks, so it holds across hosts."""
    try:
        st = os.stat(os.path.join(run_path, "STATUS"))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def read_status(run_path: str) -> tuple[str | None, str]:
    return RunDir(run_path, writer=False).status() if os.path.isdir(run_path) else (None, "")


def last_train_record(run_path: str) -> dict | None:
    """The newest train record of the run's metrics.jsonl (read from its end)."""
    path = os.path.join(run_path, "metrics.jsonl")
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 65536))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("split") == "train":
            return record
    return None


def progress_records(run_path: str) -> list[dict | None]:
    """The newest train record of the run, or of each seed's run for a group of seeds trained in
    one process (its ``seeds.json`` lists their directories)."""
    try:
        with open(os.path.join(run_path, "seeds.json")) as f:
            dirs = json.load(f)["dirs"]
    except (OSError, ValueError, KeyError):
        return [last_train_record(run_path)]
    return [last_train_record(os.path.join(run_path, d)) for d in dirs]


def _progress(run_id: str, records: list[dict | None]) -> str:
    losses = [r.get("loss") if r else None for r in records]
    if not records or not all(isinstance(v, (int, float)) for v in losses):
        return f"{run_id} starting"
    return f"{run_id} step {records[0]['step']} loss {'/'.join(f'{v:.4g}' for v in losses)}"


def _runner_log(run_path: str, text: str) -> None:
    with open(os.path.join(run_path, "runner.log"), "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {socket.gethostname()} pid {os.getpid()}: {text}\n")


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


def _recorded_end(status: str | None, reason: str, rewritten: bool) -> bool:
    """Whether a run that exited non-zero wrote how it ended in its STATUS (``rewritten``: since it
    started): failed with its reason; stopped by a signal (exit 143 / 130, STATUS running,
    "interrupted by ..."; it resumes when re-run); or done, then killed while closing down (its
    results are complete, so it stays done)."""
    return rewritten and (status in ("failed", "done")
                          or (status == "running" and reason.startswith("interrupted by ")))


# ---- the runner ----
class Runner:
    """Runs ``runs`` (``launch.sweep.Run``) on ``slot_devices`` (see :func:`slots`); ``run()``
    returns the exit code: 1 if any of its runs ended failed (or the runner was stopped)."""

    def __init__(self, runs, slot_devices, retry_failed: bool = True, refresh: float = 5.0, env=None,
                 commit: str | None = None, start_within: float | None = None):
        self.runs, self.slots = list(runs), list(slot_devices)
        # No run starts once this many seconds have passed (running ones finish): a time-boxed
        # allocation ends with whole runs rather than killed ones.
        self.start_within = start_within
        self.commit = commit  # the code's git commit, written into each run's runner.log when it starts
        self.retry_failed, self.refresh = retry_failed, refresh
        self.env = dict(os.environ if env is None else env)
        self.running: dict[int, tuple] = {}  # slot -> (run, process, output file, STATUS stamp at start)
        self.outcome: dict[str, str] = {}    # run id -> done / failed / running / claimed elsewhere
        self.stamps: dict[str, tuple | None] = {}  # run id -> STATUS stamp when this runner began
        self._stop = False
        self.unstarted = 0  # runs left queued by start_within
        self._last_summary = ""
        self.restarts: dict[str, int] = {}   # run id -> starts again after a failed backend start
        self.requeue: list = []              # runs to start again (see START_FAILURES)

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.stamps = {r.id: status_stamp(r.path) for r in self.runs}
        queue = [r for r in self.runs if not self._settled(r)]
        log.info("%d runs: %d %s, %d to run on %d slot(s)", len(self.runs), len(self.runs) - len(queue),
                 "already done" if self.retry_failed else "already done or failed", len(queue), len(self.slots))
        last_summary, began, closed = 0.0, time.time(), False
        try:
            while (queue or self.running or self.requeue) and not self._stop:
                if not closed and self.start_within is not None and time.time() - began >= self.start_within:
                    closed = True
                    left = len(queue) + len(self.requeue)
                    log.info("--start-within %gs passed: %d queued run(s) left for a later pass", self.start_within, left)
                    queue, self.requeue, self.unstarted = [], [], left
                self._reap()
                queue += [r for r, at in self.requeue if time.time() >= at]
                self.requeue = [(r, at) for r, at in self.requeue if time.time() < at]
                for slot in range(len(self.slots)):
                    while slot not in self.running and queue and not self._stop:
                        self._start(slot, queue.pop(0))
                if time.time() - last_summary >= self.refresh:
                    self._summary(len(queue))
                    last_summary = time.time()
                time.sleep(0.2)
            if self._stop:
                self._terminate()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self._summary(0, final=True)
        return self._final_table()

    def _on_signal(self, signum, frame):
        log.warning("signal %d: stopping the running runs (they save a checkpoint and can resume)", signum)
        self._stop = True

    def _settled(self, run) -> bool:
        """Whether the run needs no start: done; failed and not to be retried; or failed by another
        runner since this one began (retrying that here would run it twice in one sweep pass)."""
        status, _ = read_status(run.path)
        fresh = status_stamp(run.path) != self.stamps.get(run.id)
        if status == "done" or (status == "failed" and (not self.retry_failed or fresh)):
            self.outcome[run.id] = status
            return True
        return False

    def _start(self, slot: int, run) -> None:
        if self._settled(run):  # another runner finished it while this one was busy
            return
        if not claim(run.path):
            self.outcome[run.id] = "claimed elsewhere"
            return
        if self._settled(run):  # ... or between the check and the claim
            release(run.path)
            return
        env = dict(self.env)
        device = self.slots[slot]
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
            if self.slots.count(device) > 1:  # runs share this GPU: allocate memory as needed
                env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        out = open(os.path.join(run.path, "stdout.txt"), "a")
        stamp = status_stamp(run.path)
        where = "CPU" if device is None else f"CUDA_VISIBLE_DEVICES={device}"
        _runner_log(run.path, f"started on slot {slot} ({where})" + (f" at git {self.commit}" if self.commit else ""))
        log.info("start %s on slot %d (%s)", run.id, slot, where)
        process = subprocess.Popen(run.command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=os.getcwd(), start_new_session=True)
        note_child(run.path, process.pid)
        self.running[slot] = (run, process, out, stamp)

    def _reap(self) -> None:
        for slot, (run, process, out, stamp) in list(self.running.items()):
            rc = process.poll()
            if rc is None:
                continue
            out.close()
            del self.running[slot]
            status, reason = read_status(run.path)
            if rc != 0 and not _recorded_end(status, reason, status_stamp(run.path) != stamp):
                # The process died without recording why (killed, or before the trainer began).
                reason = f"exit code {rc}; last output:\n{_tail(os.path.join(run.path, 'stdout.txt'))}"
                RunDir(run.path).set_status("failed", reason)
                status = "failed"
            if rc != 0 and status == "done":
                log.warning("%s: exit code %d after its STATUS said done; kept done", run.id, rc)
            _runner_log(run.path, f"ended with exit code {rc}, STATUS {status}")
            self.outcome[run.id] = {"running": "interrupted (resumes when re-run)", None: "no STATUS"}.get(
                status, status)
            release(run.path)
            if status == "failed" and self._transient(run, reason or ""):
                continue
            if status == "failed":
                log.error("FAILED %s: %s", run.id, (reason or f"exit code {rc}").splitlines()[0])
            else:
                log.info("end %s: exit code %d, STATUS %s", run.id, rc, status)

    def _transient(self, run, reason: str) -> bool:
        """Whether a failed run only failed to start its accelerator backend (seen when several
        processes initialize CUDA on one GPU at once): then it starts again after a pause, up to
        ``START_RETRIES`` times."""
        if not any(m in reason for m in START_FAILURES) or self.restarts.get(run.id, 0) >= START_RETRIES:
            return False
        self.restarts[run.id] = self.restarts.get(run.id, 0) + 1
        self.stamps[run.id] = status_stamp(run.path)  # this runner's own failure: retry it here
        self.requeue.append((run, time.time() + START_RETRY_DELAY_S * self.restarts[run.id]))
        log.warning("%s failed to start its backend; starting it again (%d of %d)", run.id,
                    self.restarts[run.id], START_RETRIES)
        _runner_log(run.path, f"backend start failed; retry {self.restarts[run.id]} of {START_RETRIES}")
        return True

    def _terminate(self) -> None:
        for run, process, _, _ in self.running.values():
            process.send_signal(signal.SIGTERM)
        deadline = time.time() + STOP_GRACE_S
        while self.running and time.time() < deadline:
            self._reap()
            time.sleep(0.5)
        for run, process, _, _ in self.running.values():
            log.error("killing %s: it did not stop within %d s", run.id, STOP_GRACE_S)
            process.kill()
        while self.running:
            self._reap()
            time.sleep(0.1)

    def _summary(self, queued: int, final: bool = False) -> None:
        """The live line: counts, and each running run's latest step and loss (repeated while
        running to show the runner is alive; at the end only if it changed)."""
        counts = {k: sum(v == k for v in self.outcome.values()) for k in ("done", "failed")}
        parts = []
        for run, _, _, _ in self.running.values():
            parts.append(_progress(run.id, progress_records(run.path)))
        line = (f"done {counts['done']} | running {len(self.running)} | failed {counts['failed']} | "
                f"queued {queued}" + (("  ::  " + "; ".join(parts)) if parts else ""))
        if not (final and line == self._last_summary):
            log.info("%s", line)
        self._last_summary = line

    def _final_table(self) -> int:
        width = max([len(r.id) for r in self.runs] + [3])
        lines = [f"{'run':{width}s}  outcome"] + [
            f"{r.id:{width}s}  {self.outcome.get(r.id, 'not started')}" for r in self.runs]
        print("\n".join(lines), flush=True)
        failed = sum(self.outcome.get(r.id) == "failed" for r in self.runs)
        return 1 if failed or self._stop or self.unstarted else 0


if __name__ == "__main__":
    sys.exit("use: python -m launch.sweep configs/<file>.py --root runs/<name>")
