"""What a run config builds: mesh, model with its recipes, optimizer and schedule, initial state, corpus.

    mesh = build.make_mesh(cfg)                        # ConfigError if the mesh does not fit
    mcfg, policy, model = build.make_model(cfg)        # recipes assigned, parameters from cfg.seed
    tx, schedule = build.make_optimizer(cfg, policy)
    built = build.setup(cfg, mesh)                     # sharded TrainState / FinetuneState, graphs, tx

The same functions build the model for training (``loop``), for loading a run back
(``restore.load_run``) and for fine-tuning (``finetune``), so all three compute alike. This
module reads configs only, never another run's files: it imports nothing from ``restore``,
``finetune`` or ``loop``, which import it (the chain is described in ``lowprec.train``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lowprec import data as lpdata
from lowprec.models import llama
from lowprec.nn import assign_execution, assign_recipes
from lowprec.ops import recipes
from lowprec.optim import get_policy
from lowprec.quant.execution import Execution
from lowprec.train import finetune_modes, run_recipes, sharding
from lowprec.train.config_check import ConfigError
from lowprec.train.step import FinetuneState, TrainState, split_histories

logger = logging.getLogger(__name__)
_logged: set = set()


def make_mesh(cfg):
    """The config's mesh: ``mesh.devices`` devices (-1: all) with its axis sizes; ConfigError if they do not fit."""
    sizes = {k: v for k, v in cfg.mesh.items() if k != "devices"}
    devices = jax.devices() if cfg.mesh.devices == -1 else jax.devices()[:cfg.mesh.devices]
    try:
        return sharding.make_mesh(sizes, devices)
    except ValueError as e:
        raise ConfigError(" ".join(f"mesh: {e}".split())) from None


def check_kernels_fit(cfg, mesh) -> None:
    """A recipe whose Pallas kernel XLA cannot partition is an error on a mesh of several devices
    (XLA would gather each of its operands onto every device, silently)."""
    if mesh.devices.size == 1:
        return
    if execution(cfg) is not None and execution(cfg).fp8_transposes == "pallas":
        raise ConfigError(f"execution {cfg.execution!r} has fp8_transposes='pallas', whose cast-transpose kernel is "
                          f"not partitioned across the mesh's {mesh.devices.size} devices: train it on one device "
                          "(mesh.devices=1), or use fp8_transposes='fused'")
    for _, spec in recipe_rules(cfg):
        if execution(cfg) is None and recipes.get(spec).fp8_transposes == "pallas":
            raise ConfigError(f"recipe {spec if isinstance(spec, str) else spec.name!r} has fp8_transposes='pallas', "
                             f"whose cast-transpose kernel is not partitioned across the mesh's {mesh.devices.size} "
                             "devices: train it on one device (mesh.devices=1), or use fp8_transposes='fused'")


def recipe_rules(cfg) -> list[tuple]:
    """qat mode's rule for its targeted layers first, then the config's rules, then its recipe;
    names resolved through the run's recorded definitions (``run_recipes.resolve``)."""
    return finetune_modes.qat_rules(cfg) + run_recipes.rules(cfg) + [(".*", run_recipes.resolve(cfg, cfg.recipe))]


def execution(cfg) -> Execution | None:
    """The run's Execution (``cfg.execution``; None where it is ``""``: each recipe's own fields)."""
    spec = cfg.get("execution", "")
    return Execution.parse(spec) if spec else None


def make_model(cfg):
    """(LlamaConfig, Policy, model) of ``cfg``, its recipes assigned, its parameters initialized from ``cfg.seed``."""
    policy = get_policy(cfg.policy)
    arch = json.loads(cfg.model.arch or "{}")  # a Hugging Face checkpoint's sizes (finetune.init_from_hf)
    mcfg = llama.config_for(cfg.model.size, **arch, tie_embeddings=cfg.model.tie_embeddings, remat=cfg.model.remat,
                            scan_unroll=cfg.model.scan_unroll,
                            dtype=policy.compute_dtype, param_dtype=policy.param_dtype,
                            vocab_size=cfg.model.vocab_size, attention=cfg.model.attention or None)
    model = llama.Llama(mcfg, nnx.Rngs(cfg.seed))
    assign_recipes(model, recipe_rules(cfg))
    chosen = assign_execution(model, execution(cfg))
    _log_execution(chosen)
    return mcfg, policy, model


def _log_execution(chosen: Execution | None) -> None:
    """Logs the run's Execution once per process and value."""
    line = "each recipe's own fields" if chosen is None else chosen.describe()
    if line not in _logged:
        _logged.add(line)
        logger.info("execution: %s", line)


def shard(state, mesh):
    """(``state`` placed on ``mesh`` by its variables' logical axis names, the shardings)."""
    specs = nnx.get_partition_spec(state)
    shardings = jax.tree.map(lambda spec, p: sharding.named_sharding(spec, p.shape, mesh), specs, state)
    return jax.device_put(state, shardings), shardings


def build_model(cfg, mesh):
    """The model with its recipes assigned, its Params sharded on ``mesh`` by logical names."""
    check_kernels_fit(cfg, mesh)
    mcfg, policy, model = make_model(cfg)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, shardings = shard(params, mesh)
    return mcfg, policy, graphdef, params, rest, shardings


def make_optimizer(cfg, policy, key=None):
    """(the run's optimizer: AdamW after global-norm clipping, inside ``policy``'s optimizer
    wrapper; its warmup-cosine learning-rate schedule). ``key``: the wrapper's (stochastic
    rounding); default ``jax.random.key(cfg.seed + 1)``."""
    o = cfg.optim
    schedule = optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps, max(cfg.train.steps, o.warmup_steps + 1),
                                                  end_value=o.lr * o.min_lr_ratio)
    inner = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                        optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
    return policy.optimizer(inner, key=jax.random.key(cfg.seed + 1) if key is None else key), schedule


def load_corpus(cfg) -> lpdata.Corpus:
    """The run config's corpus: ``data.source`` / ``data.path``, restricted to ``data.include`` /
    ``data.exclude`` ("": no restriction); a data block built by hand (``experiments.ptq``'s
    ``--hf`` runs) may leave out the optional fields."""
    d = cfg.data
    options = {"tokenizer": d.tokenizer} if d.get("tokenizer") else {}  # text files (checked: finetune.resolve_model)
    return lpdata.load(d.source, d.path or None, include=d.get("include") or None, exclude=d.get("exclude") or None,
                       **options)


@dataclasses.dataclass
class Setup:
    """A run's model (split), initial state and optimizer, before any checkpoint is restored."""

    mcfg: llama.LlamaConfig
    policy: Any
    graphdef: Any         # the training graph
    eval_graphdef: Any    # the same with LoRA dropout off
    rest: Any             # variables neither trained, frozen nor step state (e.g. telemetry probes)
    state: TrainState | FinetuneState
    tx: optax.GradientTransformation
    schedule: Any
    full_params: Any      # shapes of the model's Params before adapters (for memory comparisons)
    init: dict | None = None  # where pretrained Params came from (``load_params``' record)


def setup(cfg, mesh, load_params: Callable[[Any, nnx.Module], dict] | None = None) -> Setup:
    """Builds ``cfg``'s model on ``mesh``, sets its Params with ``load_params(cfg, model)`` if
    given (``finetune.load_pretrained``; its result is ``Setup.init``), adds the mode's adapters,
    splits trainable from frozen variables and initializes the optimizer."""
    check_kernels_fit(cfg, mesh)
    mcfg, policy, model = make_model(cfg)
    init = load_params(cfg, model) if load_params is not None else None
    full_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.state(model, nnx.Param))
    finetune_modes.adapt(cfg, model)
    graphdef, eval_graphdef, params, frozen, rest = finetune_modes.split(cfg, model)
    amax, rest = split_histories(rest)
    params, _ = shard(params, mesh)
    tx, schedule = make_optimizer(cfg, policy)
    opt_state = jax.jit(tx.init)(params)
    if frozen is None:
        state = TrainState(jnp.zeros((), jnp.int32), params, opt_state, amax)
    else:
        state = FinetuneState(jnp.zeros((), jnp.int32), params, opt_state, shard(frozen, mesh)[0], amax)
    return Setup(mcfg, policy, graphdef, eval_graphdef, rest, sharding.onto_mesh(state, mesh), tx, schedule,
                 full_params, init)
