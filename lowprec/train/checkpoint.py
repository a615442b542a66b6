"""Checkpoints through orbax: asynchronous saves, keep the last K, resume from the newest one
that restores (an unreadable one is skipped with a warning and set aside, never deleted)."""

from __future__ import annotations

import hashlib
import logging
import os

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

UNREADABLE = "-unreadable"  # <checkpoints>-unreadable/<step>: where an unreadable checkpoint is set aside


class CheckpointError(RuntimeError):
    """No checkpoint of a run restores; the message names each one and what is wrong with it."""


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

    def restore_latest(self, abstract_state, set_aside: bool = True):
        """(step, state, meta) of the newest checkpoint that restores.

        One that does not (a file truncated or missing) is skipped with one warning naming its
        step and what is wrong. With ``set_aside`` (a run that goes on saving) the skipped ones
        are moved, never deleted, to ``<directory>-unreadable/<step>`` once a good one restored:
        orbax then neither counts them among the ``keep`` it keeps nor finds the step taken
        when the resumed run saves it again. None restoring raises :class:`CheckpointError`
        and moves nothing.
        """
        bad = []
        steps = sorted(self.manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                state, meta = self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any failure to read it; the reason is reported
                bad.append((step, describe(e)))
                then = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no older checkpoint"
                log.warning("checkpoint of step %d in %s is unreadable (%s); %s", step, self.directory,
                            bad[-1][1], then)
                continue
            if bad and set_aside:
                self._set_aside([s for s, _ in bad])
            return step, state, meta
        raise CheckpointError(f"no checkpoint in {self.directory} restores: " + "; ".join(
            f"step {s}: {why}" for s, why in bad) + " (they are left in place)")

    @property
    def directory(self) -> str:
        return str(self.manager.directory)

    def _set_aside(self, steps: list[int]) -> None:
        """Moves ``steps`` to ``<directory>-unreadable/`` (process 0; the others wait for it)."""
        if jax.process_index() == 0:
            aside = self.directory.rstrip("/") + UNREADABLE
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                target = os.path.join(aside, str(step))
                n = 1
                while os.path.exists(target):  # the same step went bad before: keep both
                    target, n = os.path.join(aside, f"{step}.{n}"), n + 1
                os.rename(os.path.join(self.directory, str(step)), target)
                log.warning("set aside unreadable checkpoint of step %d as %s (kept for inspection)", step, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("lowprec checkpoints set aside")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract(tree):
    """ShapeDtypeStructs (with shardings) for restoring into arrays like ``tree``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def describe(e: BaseException) -> str:
    """One line for a failed restore: the innermost cause's type and first line, without the
    TensorStore spec that orbax appends (hundreds of lines)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = (str(e).splitlines() or [""])[0].split(" [tensorstore_spec=")[0]
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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
