"""Token windows of a split, served as training batches and as evaluation batches.

Training: an epoch is a pseudo-random permutation of the split's windows; batch ``step`` is a
pure function of ``(seed, step)``, so the iterator's whole state is the step number that a
checkpoint stores, and a resumed run sees exactly the batches an uninterrupted one would.
Evaluation: every window of the split exactly once, in a fixed order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from lowprec.data.corpus import Split
from lowprec.data.permutation import mix, permute
from lowprec.data.sharding import DATA_AXES, global_batch

log = logging.getLogger(__name__)

_EVAL_KEY = 0x5EED_E7A1


class Windows:
    """The split's windows of ``seq_len + 1`` tokens, starting every ``seq_len`` tokens inside
    each span (inputs and next-token targets of one training row); none crosses a span end."""

    def __init__(self, split: Split, seq_len: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive; got {seq_len}")
        if not split.spans:
            raise ValueError(f"the {split.name} split is empty (val_fraction=0, or a selection "
                             "that leaves it nothing)")
        self.split, self.seq_len = split, seq_len
        lengths = np.asarray([b - a for a, b in split.spans], dtype=np.int64)
        counts = np.where(lengths > seq_len, (lengths - 1) // seq_len, 0)
        self.count = int(counts.sum())
        if self.count == 0:
            raise ValueError(f"seq_len {seq_len} is larger than the data: the longest span of "
                             f"the {split.name} split has {lengths.max()} tokens, a window "
                             f"needs seq_len + 1 = {seq_len + 1}")
        self._starts = np.asarray([a for a, _ in split.spans], dtype=np.int64)
        self._ends = np.cumsum(counts)  # window ids of span i: [_firsts[i], _ends[i])
        self._firsts = self._ends - counts

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """Windows ``ids`` as an int32 array (len(ids), seq_len + 1)."""
        span = np.searchsorted(self._ends, ids, side="right")
        start = self._starts[span] + (ids - self._firsts[span]) * self.seq_len
        idx_NxT = start[:, None] + np.arange(self.seq_len + 1)
        return np.asarray(self.split.tokens[idx_NxT], dtype=np.int32)


class Batches:
    """Training batches ``(batch_size, seq_len + 1)`` int32, forever, in epochs.

    Iterating yields numpy arrays, or global ``jax.Array``s sharded over ``data_axes`` when a
    ``mesh`` is given. ``state()`` / ``restore()`` carry the position across a checkpoint.
    """

    def __init__(self, split: Split, *, seq_len: int, batch_size: int, seed: int = 0,
                 mesh: Mesh | None = None, data_axes: Sequence[str] = DATA_AXES):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        self.windows = Windows(split, seq_len)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.mesh, self.data_axes = mesh, tuple(data_axes)
        self.step = 0
        log.info("%s: %d windows of %d tokens, %.1f batches per epoch", split.name,
                 self.windows.count, seq_len + 1, self.windows.count / batch_size)

    def rows(self, step: int, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of batch ``step``."""
        if step < 0 or not 0 <= start <= stop <= self.batch_size:
            raise ValueError(f"rows({step}, {start}, {stop}) outside step >= 0, "
                             f"0 <= start <= stop <= batch_size={self.batch_size}")
        sample = step * self.batch_size + np.arange(start, stop, dtype=np.int64)
        epoch, pos = np.divmod(sample, self.windows.count)
        ids = np.empty_like(pos)
        for e in np.unique(epoch):
            here = epoch == e
            ids[here] = permute(pos[here], self.windows.count, mix(self.seed, int(e)))
        return self.windows.gather(ids)

    def batch(self, step: int) -> np.ndarray:
        return self.rows(step, 0, self.batch_size)

    def global_batch(self, step: int, mesh: Mesh,
                     data_axes: Sequence[str] = DATA_AXES) -> jax.Array:
        return global_batch(lambda a, b: self.rows(step, a, b),
                            (self.batch_size, self.seq_len + 1), mesh, data_axes)

    def epoch(self, step: int | None = None) -> float:
        """Passes over the split completed before batch ``step`` (default: the current one)."""
        return (self.step if step is None else step) * self.batch_size / self.windows.count

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        step, self.step = self.step, self.step + 1
        if self.mesh is None:
            return self.batch(step)
        return self.global_batch(step, self.mesh, self.data_axes)

    def state(self) -> dict:
        """What a checkpoint stores: the next step, and the settings it is only valid for."""
        return {"step": self.step, "seed": self.seed, "seq_len": self.seq_len,
                "batch_size": self.batch_size}

    def restore(self, state: dict) -> None:
        for key in ("seed", "seq_len", "batch_size"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"data state has {key}={state[key]}, this iterator "
                                 f"{key}={getattr(self, key)}; a resumed run must keep it")
        self.step = int(state["step"])


class EvalBatches:
    """The validation split in fixed-shape batches: ``(tokens, valid)`` per batch, tokens
    ``(batch_size, seq_len + 1)`` int32 and valid ``(batch_size,)`` bool.

    All batches together hold every window exactly once; rows past the end of the last batch
    repeat a window and have ``valid`` False. The order is a fixed shuffle, so
    ``max_batches`` keeps a uniform sample of the split.
    """

    def __init__(self, split: Split, *, seq_len: int, batch_size: int,
                 max_batches: int | None = None, mesh: Mesh | None = None,
                 data_axes: Sequence[str] = DATA_AXES):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        self.windows = Windows(split, seq_len)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.mesh, self.data_axes = mesh, tuple(data_axes)
        self.num_batches = math.ceil(self.windows.count / batch_size)
        if max_batches:
            self.num_batches = min(self.num_batches, max_batches)

    def rows(self, index: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        k = index * self.batch_size + np.arange(start, stop, dtype=np.int64)
        valid = k < self.windows.count
        ids = permute(np.where(valid, k, 0), self.windows.count, _EVAL_KEY)
        return self.windows.gather(ids), valid

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.rows(index, 0, self.batch_size)

    def global_batch(self, index: int, mesh: Mesh, data_axes: Sequence[str] = DATA_AXES):
        shape = (self.batch_size, self.seq_len + 1)
        tokens = global_batch(lambda a, b: self.rows(index, a, b)[0], shape, mesh, data_axes)
        valid = global_batch(lambda a, b: self.rows(index, a, b)[1], shape[:1], mesh, data_axes)
        return tokens, valid

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator:
        for i in range(self.num_batches):
            yield self.batch(i) if self.mesh is None else self.global_batch(i, self.mesh,
                                                                            self.data_axes)
