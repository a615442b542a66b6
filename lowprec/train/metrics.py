"""Metrics to metrics.jsonl (one JSON object per line) and TensorBoard event files."""

from __future__ import annotations

import json
import logging
import math

log = logging.getLogger(__name__)


class MetricsWriter:
    """Appends ``{"step": s, "split": ..., name: value, ...}`` records; also TensorBoard scalars.

    On resume, records past the checkpointed step are dropped first (``truncate_after``) so that
    the file holds exactly one record per (step, split), as an uninterrupted run's would.
    """

    def __init__(self, jsonl_path: str, tensorboard_dir: str | None = None, enabled: bool = True):
        self.path = jsonl_path
        self.enabled = enabled
        self._tb = None
        if tensorboard_dir and enabled:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional: metrics.jsonl is the record of truth
                log.warning("tensorboardX is not installed: TensorBoard events are not written")
            else:
                self._tb = SummaryWriter(tensorboard_dir)

    def truncate_after(self, step: int) -> int:
        """Drops records with step > ``step`` (left by an interrupted run); returns how many."""
        if not self.enabled:
            return 0
        try:
            with open(self.path) as f:
                lines = f.readlines()
        except FileNotFoundError:
            return 0
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):
                break
        with open(self.path, "w") as f:
            f.writelines(kept)
        return len(lines) - len(kept)

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split}
        for k, v in values.items():
            v = float(v) if hasattr(v, "__float__") else v
            record[k] = v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) or hasattr(v, "__float__"):
                    self._tb.add_scalar(f"{split}/{k}", float(v), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
