"""The local runner: a sweep's runs as subprocesses, N at a time, one GPU slot each.

Claims make runners share a sweep safely: a run is taken by creating ``<run>/.claim`` with
``O_CREAT | O_EXCL`` (host, pid, time) and released when it ends; a claim left by a dead
process of this host is stale and taken over. Each run's output goes to ``<run>/stdout.txt``,
and ``<run>/runner.log`` records every start and end. A run whose process dies without writing
its STATUS is marked ``failed`` with the exit code and the output's last lines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from lowprec.train.rundir import RunDir

CLAIM = ".claim"


def local_gpus() -> list[str]:
    """Indices of this machine's NVIDIA GPUs (empty without nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def slots(parallel: int | None, devices: str | None) -> list[str | None]:
    """One entry per concurrent run: the GPU it sees (None: the process sees what it finds)."""
    gpus = [d.strip() for d in devices.split(",") if d.strip()] if devices else local_gpus()
    if parallel is not None and parallel < 1:
        raise ValueError(f"--parallel must be >= 1; got {parallel}")
    if not gpus:
        return [None] * (parallel or 1)
    n = parallel or len(gpus)
    return [gpus[i % len(gpus)] for i in range(n)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(run_path: str) -> bool:
    """Atomically claims the run; takes over a stale claim of this host."""
    os.makedirs(run_path, exist_ok=True)
    path = os.path.join(run_path, CLAIM)
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    owner = json.load(f)
            except (OSError, json.JSONDecodeError):
                return False  # being written right now, or unreadable: leave it
            if owner.get("host") != socket.gethostname() or _alive(int(owner.get("pid", -1))):
                return False
            print(f"[sweep] taking over the stale claim of {run_path} (pid {owner.get('pid')} is gone)", flush=True)
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(record)
        return True
    return False


def release(run_path: str) -> None:
    try:
        os.remove(os.path.join(run_path, CLAIM))
    except FileNotFoundError:
        pass


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


def _log(run_path: str, text: str) -> None:
    with open(os.path.join(run_path, "runner.log"), "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {socket.gethostname()} pid {os.getpid()}: {text}\n")


class Runner:
    """Runs ``runs`` (``launch.sweep.Run``) on ``slots``; ``run()`` returns the exit code."""

    def __init__(self, runs, slot_devices, retry_failed: bool = True, refresh: float = 10.0, env=None):
        self.runs, self.slots = list(runs), list(slot_devices)
        self.retry_failed, self.refresh = retry_failed, refresh
        self.env = dict(os.environ if env is None else env)
        self.running: dict[int, tuple] = {}  # slot -> (run, process, output file)
        self.outcome: dict[str, str] = {}    # run id -> done / failed / skipped (claimed elsewhere)
        self._stop = False

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        queue = [r for r in self.runs if not self._finished(r)]
        print(f"[sweep] {len(self.runs)} runs: {len(self.runs) - len(queue)} already done"
              f"{'' if self.retry_failed else ' or failed'}, {len(queue)} to run on {len(self.slots)} slot(s)",
              flush=True)
        last_summary = 0.0
        try:
            while (queue or self.running) and not self._stop:
                self._reap()
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
        self._summary(0)
        return self._final_table()

    # ---- internals ----
    def _on_signal(self, signum, frame):
        print(f"[sweep] signal {signum}: stopping the running runs (they save a checkpoint)", flush=True)
        self._stop = True

    def _finished(self, run) -> bool:
        status, _ = RunDir(run.path, writer=False).status() if os.path.isdir(run.path) else (None, "")
        if status == "done" or (status == "failed" and not self.retry_failed):
            self.outcome[run.id] = status
            return True
        return False

    def _start(self, slot: int, run) -> None:
        if self._finished(run):  # another runner may have finished it meanwhile
            return
        if not claim(run.path):
            self.outcome[run.id] = "claimed elsewhere"
            return
        env = dict(self.env)
        if self.slots[slot] is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.slots[slot]
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # slots may share a GPU
        out = open(os.path.join(run.path, "stdout.txt"), "a")
        _log(run.path, f"started on slot {slot} (device {self.slots[slot]})")
        process = subprocess.Popen(run.command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=os.getcwd(), start_new_session=True)
        self.running[slot] = (run, process, out)

    def _reap(self) -> None:
        for slot, (run, process, out) in list(self.running.items()):
            rc = process.poll()
            if rc is None:
                continue
            out.close()
            del self.running[slot]
            status, reason = RunDir(run.path, writer=False).status()
            if rc != 0 and status != "failed":
                tail = _tail(os.path.join(run.path, "stdout.txt"))
                RunDir(run.path).set_status("failed", f"exit code {rc}; last output:\n{tail}")
                status = "failed"
            _log(run.path, f"ended with exit code {rc}, STATUS {status}")
            self.outcome[run.id] = status or "no STATUS"
            release(run.path)
            if status == "failed":
                print(f"[sweep] FAILED {run.id}: {(reason or '').splitlines()[0] if reason else f'exit {rc}'}",
                      flush=True)

    def _terminate(self) -> None:
        for run, process, _ in self.running.values():
            process.send_signal(signal.SIGTERM)
        deadline = time.time() + 120
        while self.running and time.time() < deadline:
            self._reap()
            time.sleep(0.5)
        for run, process, _ in self.running.values():
            process.kill()

    def _summary(self, queued: int) -> None:
        counts = {k: sum(v == k for v in self.outcome.values()) for k in ("done", "failed")}
        parts = []
        for run, _, _ in self.running.values():
            rec = last_train_record(run.path)
            parts.append(f"{run.id} step {rec['step']} loss {rec['loss']:.4g}" if rec and isinstance(
                rec.get("loss"), (int, float)) else f"{run.id} starting")
        print(f"[sweep] done {counts['done']} | running {len(self.running)} | failed {counts['failed']} | "
              f"queued {queued}" + ("  ::  " + "; ".join(parts) if parts else ""), flush=True)

    def _final_table(self) -> int:
        print("[sweep] run                                                      outcome")
        failed = 0
        for run in self.runs:
            outcome = self.outcome.get(run.id, "not started")
            failed += outcome == "failed"
            print(f"[sweep] {run.id:56s} {outcome}")
        return 1 if failed or self._stop else 0


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit("use: python -m launch.sweep configs/<file>.py --root runs/<name>")
