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

import copy
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lowprec.data import hf_tokenizer
from lowprec.models import hf
from lowprec.nn import assign_recipes, lora
from lowprec.train import build, checkpoint, restore, run_recipes, sharding
from lowprec.train.checkpoint import Checkpointer, abstract
from lowprec.train.config_check import ConfigError
# The finetune block and its modes' construction, at their old import paths (finetune.check, ...).
from lowprec.train.finetune_modes import (  # noqa: F401
    ADAPTER_MODES, DEFAULTS, MODES, QAT_ESTIMATORS, adapt, check, qat_rules, split, trainable_filter,
    weight_only_recipe,
)

log = logging.getLogger(__name__)

# Model fields a fine-tune must share with the run it starts from (the parameters' shapes).
_SHAPE_FIELDS = ("size", "vocab_size", "tie_embeddings")


# LlamaConfig fields a Hugging Face config.json sets beyond model.vocab_size / model.tie_embeddings,
# recorded as JSON in model.arch (build.make_model applies them over model.size's).
ARCH_FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "d_head", "max_seq_len", "rope_theta",
               "norm_eps", "scale_tied_logits")


def resolve_model(cfg):
    """``cfg`` (a copy when changed) with the model of ``finetune.init_from_hf``'s config.json:
    ``model.vocab_size``, ``model.tie_embeddings`` and ``model.arch`` (the other sizes, GQA, head
    width, rope_theta, rms_norm_eps; the tied head unscaled) set from it, so the run's config.json
    records them and ``build`` makes that model. Then ``data.tokenizer`` is checked: text files
    only, its vocabulary within ``model.vocab_size``. ConfigError (one line) before any run is made."""
    ft = cfg.finetune
    path = ft.init_from_hf
    if path:
        if ft.init_from:
            raise ConfigError(f"finetune.init_from={ft.init_from!r} and finetune.init_from_hf={path!r}: give one")
        try:
            mcfg = hf.config_from_hf(hf.read_config(path))
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"finetune.init_from_hf {path!r}: {type(e).__name__ if isinstance(e, KeyError) else ''}"
                              f"{' '.join(str(e).split())}") from None
        arch = json.dumps({f: getattr(mcfg, f) for f in ARCH_FIELDS}, sort_keys=True)
        changed = {f"model.{k}": (cfg.model.get(k), v) for k, v in (("vocab_size", mcfg.vocab_size),
                   ("tie_embeddings", mcfg.tie_embeddings), ("arch", arch)) if cfg.model.get(k) != v}
        if changed:
            cfg = copy.deepcopy(cfg)
            with cfg.unlocked():
                for key, (_, value) in changed.items():
                    cfg.model[key.split(".")[1]] = value
            log.info("model from %s/config.json: %s", path,
                     ", ".join(f"{k}={v!r}" for k, (_, v) in changed.items()))
    check_tokenizer(cfg)
    return cfg


def check_tokenizer(cfg) -> None:
    """ConfigError unless ``data.tokenizer`` is empty or a tokenizer.json (or a directory holding
    one) for ``data.source="text"`` whose vocabulary fits ``model.vocab_size``."""
    path = cfg.data.tokenizer
    if not path:
        return
    if cfg.data.source != "text":
        raise ConfigError(f"data.tokenizer={path!r} tokenizes text files: it needs data.source='text', "
                          f"not {cfg.data.source!r}")
    try:
        tok = hf_tokenizer.load_tokenizer(path)
    except (OSError, ValueError, ImportError) as e:
        raise ConfigError(" ".join(str(e).split())) from None
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"data.tokenizer {path!r} has {tok.vocab_size} tokens but model.vocab_size is "
                          f"{cfg.model.vocab_size}: set model.vocab_size >= {tok.vocab_size}")


def _hf_fingerprint(path: str) -> str:
    """A short SHA-256 of a Hugging Face directory's config.json and safetensors files (names and contents)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        if name == hf.CONFIG or name == hf.INDEX or name.endswith(".safetensors"):
            digest.update(name.encode() + b"\0")
            with open(os.path.join(path, name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def check_init_from(cfg) -> None:
    """Raises ValueError unless ``finetune.init_from`` is a run with plain parameters of the
    configured model's shapes (read from its config.json, before any model is built); for
    ``finetune.init_from_hf``, unless the config's model is its config.json's (``resolve_model``)."""
    ft = cfg.finetune
    if ft.init_from_hf:
        if resolve_model(cfg) is not cfg:
            raise ValueError(f"finetune.init_from_hf {ft.init_from_hf!r}: the config's model fields differ from its "
                             "config.json (run it through finetune.resolve_model first)")
        return
    pre_cfg = restore.read_config(ft.init_from)
    run_recipes.check_run(ft.init_from, pre_cfg)
    pre_mode = pre_cfg.finetune.mode
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
    ft = cfg.finetune
    if ft.init_from_hf:
        return _load_hf(ft.init_from_hf, model)
    pre = restore.load_run(ft.init_from, devices=jax.local_devices()[:1])
    target = nnx.state(model, nnx.Param)
    # Through the host, as freshly initialized values (uncommitted), so any process can place them on the mesh.
    nnx.update(model, jax.tree.map(lambda p, t: jnp.asarray(np.asarray(p), t.dtype), pre.params, target))
    source = {"from": ft.init_from, "checkpoint_step": pre.step,
              "checkpoint": checkpoint.fingerprint(os.path.join(os.path.abspath(ft.init_from), "checkpoints"), pre.step)}
    log.info("initialized from %s (step %d, checkpoint %s, policy %s)", ft.init_from, pre.step, source["checkpoint"],
             pre.cfg.policy)
    return source


def _load_hf(path: str, model: nnx.Module) -> dict:
    """Sets ``model``'s Params from the Hugging Face checkpoint in ``path`` (``models.load_hf``,
    float32 on the host, then cast to the model's dtypes); returns its record (``init``)."""
    src = hf.load_hf(path, dtype=model.cfg.dtype, param_dtype="float32")
    target = nnx.state(model, nnx.Param)
    loaded = nnx.state(src, nnx.Param)
    if jax.tree.structure(loaded) != jax.tree.structure(target):
        raise ValueError(f"finetune.init_from_hf {path!r}: its parameters do not match the configured model's")
    nnx.update(model, jax.tree.map(lambda p, t: jnp.asarray(np.asarray(p), t.dtype), loaded, target))
    source = {"from_hf": os.path.abspath(path), "checkpoint": _hf_fingerprint(path)}
    log.info("initialized from Hugging Face checkpoint %s (%s)", path, source["checkpoint"])
    return source


def quantized_model(cfg, graphdef, params, frozen, rest, amax=None):
    """(graphdef, params, rest) of the model to evaluate for ``eval_quantized``: adapters merged
    into their layers, the targeted layers' weights rounded to ``eval_quantized`` in the forward
    pass (the same quantizer as qat mode), the other layers as trained."""
    ft = cfg.finetune
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
