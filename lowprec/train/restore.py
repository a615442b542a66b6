"""Load a trained run back: its config, its model with the checkpointed parameters.

    run = restore.load_run("runs/20m-bf16")          # latest checkpoint
    run.model(tokens_BxT)                            # an nnx.Module with the trained weights
    run.params, run.cfg, run.step

Used by post-training quantization, fine-tuning from a pretrained run and evaluation. The model
and optimizer are built by ``build``, as training built them; this module imports ``build``,
never ``finetune`` or ``loop`` (the chain is described in ``lowprec.train``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lowprec.train import build, imports, schema, sharding
from lowprec.train.checkpoint import Checkpointer, abstract
from lowprec.train.step import TrainState, split_histories


@dataclasses.dataclass
class RestoredRun:
    cfg: ml_collections.ConfigDict   # the run's config (from config.json)
    mcfg: Any                        # its LlamaConfig
    policy: Any                      # its precision Policy
    graphdef: Any
    params: Any                      # nnx.State of Params, restored
    rest: Any
    step: int                        # the checkpoint's step
    mesh: Any

    @property
    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params, self.rest)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's config.json, brought up to date (``schema.upgrade``: a run of an older version
    reads with today's fields), after importing the modules its ``imports`` names (so that the
    formats and recipes they register resolve)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} is not a run directory: it has no config.json")
    with open(path) as f:
        cfg = ml_collections.ConfigDict(schema.upgrade(json.load(f)))
    imports.from_config(cfg)
    return cfg


def load_run(workdir: str, step: int | None = None, devices=None) -> RestoredRun:
    """The run in ``workdir`` at checkpoint ``step`` (default: the newest that restores) on ``devices``
    (default: the first local device), parameters in the run's storage dtype."""
    workdir = os.path.abspath(workdir)  # orbax needs absolute paths
    cfg = read_config(workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints, async_save=False)
    if ckpt.latest_step() is None:
        raise FileNotFoundError(f"{workdir} has no checkpoint to restore")
    mesh = sharding.make_mesh({"data": -1}, devices or jax.devices()[:1])
    mcfg, policy, graphdef, params, rest, _ = build.build_model(cfg, mesh)
    amax, rest = split_histories(rest)
    tx, _ = build.make_optimizer(cfg, policy)
    state = TrainState(jnp.zeros((), jnp.int32), params, jax.jit(tx.init)(params), amax)
    state = sharding.onto_mesh(state, mesh)
    if step is None:  # the newest that restores; an unreadable one is skipped with a warning, left in place
        step, restored, _ = ckpt.restore_latest(abstract(state), set_aside=False)
    else:
        restored, _ = ckpt.restore(step, abstract(state))
    ckpt.close()
    if restored.amax is not None:  # the trained histories join the rest
        rest = nnx.merge_state(rest, restored.amax)
    return RestoredRun(cfg, mcfg, policy, graphdef, restored.params, rest, int(step), mesh)
