"""Fine-tuning from a pretrained run: full, LoRA, QLoRA and quantization-aware (QAT) modes.

The ``finetune`` config block says how (``configs/lm.py``): ``init_from`` (a run directory whose
latest checkpoint gives the starting parameters; the optimizer starts fresh), ``mode``
(``full``: every parameter trains; ``lora``/``qlora``: only adapters on the layers matching
``lora_targets`` train, over a frozen base kept as it is or stored in ``base_format``; ``qat``:
every parameter trains while the targeted layers' weights pass through ``base_format``'s
quantizer with the ``qat_estimator`` gradient), and ``eval_quantized`` (a format: at the end,
the validation loss of the model with its targeted weights rounded to it, adapters merged
first). The training loop calls these functions; a resumed run restores its own checkpoint.

The block itself (defaults, check) and what each mode changes in a freshly built model (qat's
recipe rule, adapters, the trainable split) are ``finetune_modes``', re-exported here; this
module adds what reads another run: starting from ``init_from`` and ``load_finetuned``. It
imports ``build`` and ``restore``, never ``loop`` (the chain is described in ``lowprec.train``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lowprec.nn import assign_recipes, lora
from lowprec.train import build, checkpoint, restore, run_recipes, sharding
from lowprec.train.checkpoint import Checkpointer, abstract
# The finetune block and its modes' construction, at their old import paths (finetune.settings, ...).
from lowprec.train.finetune_modes import (  # noqa: F401
    ADAPTER_MODES, DEFAULTS, MODES, QAT_ESTIMATORS, adapt, check, qat_rules, settings, split, trainable_filter,
    weight_only_recipe,
)

log = logging.getLogger(__name__)

# Model fields a fine-tune must share with the run it starts from (the parameters' shapes).
_SHAPE_FIELDS = ("size", "vocab_size", "tie_embeddings")


def check_init_from(cfg) -> None:
    """Raises ValueError unless ``finetune.init_from`` is a run with plain parameters of the
    configured model's shapes (read from its config.json, before any model is built)."""
    ft = settings(cfg)
    pre_cfg = restore.read_config(ft.init_from)
    run_recipes.check_run(ft.init_from, pre_cfg)
    pre_mode = settings(pre_cfg).mode
    if pre_mode in ADAPTER_MODES:
        raise ValueError(f"finetune.init_from {ft.init_from!r} is a {pre_mode} run; start from a run with plain "
                         "parameters (mode full or qat)")
    for field in _SHAPE_FIELDS:
        if pre_cfg.model[field] != cfg.model[field]:
            raise ValueError(f"finetune.init_from {ft.init_from!r} has model.{field}={pre_cfg.model[field]!r} "
                             f"but this config has {cfg.model[field]!r}; they must match")


def load_pretrained(cfg, model: nnx.Module) -> dict:
    """Sets ``model``'s Params from ``finetune.init_from``'s latest checkpoint (cast to the
    model's dtypes); returns where they came from: the run, the checkpoint's step and its
    fingerprint (``checkpoint.fingerprint``), recorded as the fine-tune's ``init`` metrics."""
    ft = settings(cfg)
    pre = restore.load_run(ft.init_from, devices=jax.local_devices()[:1])
    target = nnx.state(model, nnx.Param)
    # Through the host, as freshly initialized values (uncommitted), so any process can place them on the mesh.
    nnx.update(model, jax.tree.map(lambda p, t: jnp.asarray(np.asarray(p), t.dtype), pre.params, target))
    source = {"from": ft.init_from, "checkpoint_step": pre.step,
              "checkpoint": checkpoint.fingerprint(os.path.join(os.path.abspath(ft.init_from), "checkpoints"), pre.step)}
    log.info("initialized from %s (step %d, checkpoint %s, policy %s)", ft.init_from, pre.step, source["checkpoint"],
             pre.cfg.policy)
    return source


def quantized_model(cfg, graphdef, params, frozen, rest, amax=None):
    """(graphdef, params, rest) of the model to evaluate for ``eval_quantized``: adapters merged
    into their layers, the targeted layers' weights rounded to ``eval_quantized`` in the forward
    pass (the same quantizer as qat mode), the other layers as trained."""
    ft = settings(cfg)
    model = nnx.merge(graphdef, params, *(v for v in (frozen, amax) if v is not None), rest)
    if ft.mode in ADAPTER_MODES:
        model = lora.merge_lora(model)
    assign_recipes(model, [(ft.lora_targets, weight_only_recipe(ft.eval_quantized))])
    return nnx.split(model, nnx.Param, ...)


@dataclasses.dataclass
class FinetunedRun:
    """A fine-tuned run loaded back (see ``load_finetuned``)."""

    cfg: ml_collections.ConfigDict
    model: nnx.Module     # adapters and frozen base merged back (LoRA dropout off)
    state: Any            # the restored TrainState / FinetuneState
    step: int


def load_finetuned(workdir: str, step: int | None = None, devices=None) -> FinetunedRun:
    """A fine-tuned run of any mode at checkpoint ``step`` (default: the latest) on ``devices``
    (default: the first local device), e.g. ``lp.nn.merge_lora(load_finetuned(d).model, requantize=True)``
    for deployment. Nothing is read from its ``init_from``."""
    workdir = os.path.abspath(workdir)  # orbax needs absolute paths
    cfg = restore.read_config(workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints, async_save=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{workdir} has no checkpoint to restore")
    built = build.setup(cfg, sharding.make_mesh({"data": -1}, devices or jax.devices()[:1]))
    state, _ = ckpt.restore(step, abstract(built.state))
    ckpt.close()
    extra = (v for v in (getattr(state, "frozen", None), state.amax) if v is not None)
    model = nnx.merge(built.eval_graphdef, state.params, *extra, built.rest)
    return FinetunedRun(cfg, model, state, int(step))


def _bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def memory_summary(state, full_params, tx) -> dict:
    """Bytes of trainable parameters, frozen storage and optimizer state of this run, beside
    those of full fine-tuning (``full_params``: the plain model's Params, arrays or shapes)."""
    frozen = getattr(state, "frozen", None)
    out = {"trainable_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
           "trainable_bytes": _bytes(state.params), "frozen_bytes": _bytes(frozen),
           "optimizer_bytes": _bytes(state.opt_state)}
    out["total_bytes"] = out["trainable_bytes"] + out["frozen_bytes"] + out["optimizer_bytes"]
    out["full_params"] = int(sum(x.size for x in jax.tree.leaves(full_params)))
    out["full_param_bytes"] = _bytes(full_params)
    out["full_optimizer_bytes"] = _bytes(jax.eval_shape(tx.init, full_params))
    out["full_total_bytes"] = out["full_param_bytes"] + out["full_optimizer_bytes"]
    return out


def compiled_memory(compiled) -> dict:
    """The compiled step's memory analysis (per device), where the backend provides one."""
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError) as e:
        log.info("no compiled memory analysis on this backend: %s", e)
        return {}
    if stats is None:
        log.info("no compiled memory analysis on this backend")
        return {}
    names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
             "generated_code_size_in_bytes", "peak_memory_in_bytes")
    return {f"compiled_{n.replace('_size_in_bytes', '').replace('_in_bytes', '')}_bytes": int(getattr(stats, n))
            for n in names if getattr(stats, n, None) is not None}
