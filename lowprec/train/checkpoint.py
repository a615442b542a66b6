"""Checkpoints through orbax: asynchronous saves, keep the last K, resume from the latest."""

from __future__ import annotations

import hashlib
import logging
import os

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves ``state`` (a pytree of arrays) with a small JSON ``meta`` (data position, step)."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager(directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, force: bool = False) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, step: int, abstract_state):
        """(state, meta) of ``step``; ``abstract_state`` gives shapes, dtypes and shardings."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        log.info("restored checkpoint of step %d", step)
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract(tree):
    """ShapeDtypeStructs (with shardings) for restoring into arrays like ``tree``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def latest_on_disk(directory: str) -> int | None:
    """The largest finished step under ``directory`` (numbered subdirectories; orbax's temporary
    ones are not numbers), read from the file system alone; None without one."""
    steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
    return max(steps, default=None)


def fingerprint(directory: str, step: int) -> str:
    """A short SHA-256 of checkpoint ``step``'s files under ``directory`` (relative paths and
    contents): the identity of one saved state. A run trained again from scratch saves other
    files, so runs that started from its checkpoint can tell which one they started from."""
    root = os.path.join(directory, str(step))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no checkpoint of step {step} in {directory}")
    digest = hashlib.sha256()
    for here, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(here, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]
