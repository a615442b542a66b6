"""A run's directory: config.json, config_history.jsonl, metrics.jsonl, STATUS, log.txt,
checkpoints/, tensorboard/."""

from __future__ import annotations

import json
import logging
import os
import time

STATUSES = ("running", "done", "failed")
# Loggers of libraries whose INFO lines (orbax's, through absl, are half a run's log) stay out
# of log.txt and the terminal unless asked for (``attach_log(library_logs=True)``).
LIBRARY_LOGGERS = ("absl", "orbax", "jax", "etils", "tensorstore")


class RunDir:
    """The files of one run. ``STATUS`` holds ``running``/``done``/``failed`` + a reason line.

    Only the writer (process 0 of a multi-process run) writes config.json and STATUS.
    """

    def __init__(self, path: str, writer: bool = True):
        self.path = os.path.abspath(path)
        self.writer = writer
        os.makedirs(self.path, exist_ok=True)
        self.checkpoints = os.path.join(self.path, "checkpoints")
        self.tensorboard = os.path.join(self.path, "tensorboard")
        self.metrics = os.path.join(self.path, "metrics.jsonl")
        self.log = os.path.join(self.path, "log.txt")

    def read_config(self) -> dict | None:
        """config.json as written (None when the run never started)."""
        path = os.path.join(self.path, "config.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def record_config_change(self, entry: dict) -> None:
        """Appends ``entry`` (with the time) to config_history.jsonl: a resume under a changed config."""
        if not self.writer:
            return
        with open(os.path.join(self.path, "config_history.jsonl"), "a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}, default=str) + "\n")

    def write_config(self, config_dict: dict) -> None:
        if not self.writer:
            return
        # Replaced, never edited: a process reading config.json meanwhile sees the old or the new file.
        path = os.path.join(self.path, "config.json")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(config_dict, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)

    def set_status(self, status: str, reason: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; known: {', '.join(STATUSES)}")
        if not self.writer:
            return
        tmp = os.path.join(self.path, "STATUS.tmp")
        with open(tmp, "w") as f:
            f.write(status + ("\n" + reason if reason else "") + "\n")
        os.replace(tmp, os.path.join(self.path, "STATUS"))

    def status(self) -> tuple[str | None, str]:
        """(status, reason); (None, "") when the run never started."""
        path = os.path.join(self.path, "STATUS")
        if not os.path.exists(path):
            return None, ""
        lines = open(path).read().splitlines()
        return (lines[0] if lines else None), "\n".join(lines[1:])

    def attach_log(self, library_logs: bool = False) -> logging.Handler:
        """Copies the library's and the trainer's log records into log.txt; ``LIBRARY_LOGGERS``
        at WARNING unless ``library_logs`` (until ``detach_log``)."""
        handler = logging.FileHandler(self.log if self.writer else f"{self.log}.{os.getpid()}")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        self._levels = {name: logging.getLogger(name).level for name in ("", *LIBRARY_LOGGERS)}
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO if library_logs else logging.WARNING)
        return handler

    def detach_log(self, handler: logging.Handler) -> None:
        """Undoes ``attach_log``: log.txt closed, logger levels as they were."""
        logging.getLogger().removeHandler(handler)
        handler.close()
        for name, level in getattr(self, "_levels", {}).items():
            logging.getLogger(name).setLevel(level)


def read_metrics(path: str) -> list[dict]:
    """All records of a metrics.jsonl file (a truncated last line is ignored)."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records
