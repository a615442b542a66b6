"""The training loop: mesh, sharded state, jitted steps, eval, metrics, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lowprec import data as lpdata
from lowprec.models import llama
from lowprec.nn import assign_recipes
from lowprec.ops import recipes
from lowprec.optim import get_policy
from lowprec.train import config_check, distributed, finetune, imports, run_recipes, sharding
from lowprec.train.checkpoint import Checkpointer, abstract, latest_on_disk
from lowprec.train.config_check import ConfigError
from lowprec.train.metrics import MetricsWriter
from lowprec.train.progress import Progress, model_flops_per_token, peak_flops
from lowprec.train.rundir import RunDir
from lowprec.train.step import (
    FinetuneState, TrainState, make_eval_step, make_loss_fn, make_train_step, split_histories,
)
from lowprec.train.telemetry import first_nonfinite, flatten, make_telemetry_fn, nonfinite_params

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The loss went inf/NaN; the message names the step (and the first non-finite layers)."""


def make_model(cfg):
    """(LlamaConfig, Policy, model) of ``cfg``, its recipes assigned, its parameters initialized from ``cfg.seed``."""
    policy = get_policy(cfg.policy)
    mcfg = llama.config_for(cfg.model.size, tie_embeddings=cfg.model.tie_embeddings, remat=cfg.model.remat,
                            scan_unroll=cfg.model.get("scan_unroll", 0),
                            dtype=policy.compute_dtype, param_dtype=policy.param_dtype,
                            vocab_size=cfg.model.vocab_size, attention=cfg.model.attention or None)
    model = llama.Llama(mcfg, nnx.Rngs(cfg.seed))
    assign_recipes(model, recipe_rules(cfg))
    return mcfg, policy, model


def build_model(cfg, mesh):
    """The model with its recipes assigned, its Params sharded on ``mesh`` by logical names."""
    _check_kernels_fit(cfg, mesh)
    mcfg, policy, model = make_model(cfg)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, shardings = shard(params, mesh)
    return mcfg, policy, graphdef, params, rest, shardings


def _check_kernels_fit(cfg, mesh) -> None:
    """A recipe whose Pallas kernel XLA cannot partition is an error on a mesh of several devices
    (XLA would gather each of its operands onto every device, silently)."""
    if mesh.devices.size == 1:
        return
    for _, spec in recipe_rules(cfg):
        if recipes.get(spec).fp8_transposes == "pallas":
            raise ConfigError(f"recipe {spec if isinstance(spec, str) else spec.name!r} has fp8_transposes='pallas', "
                             f"whose cast-transpose kernel is not partitioned across the mesh's {mesh.devices.size} "
                             "devices: train it on one device (mesh.devices=1), or use fp8_transposes='fused'")


def shard(state, mesh):
    """(``state`` placed on ``mesh`` by its variables' logical axis names, the shardings)."""
    specs = nnx.get_partition_spec(state)
    shardings = jax.tree.map(lambda spec, p: sharding.named_sharding(spec, p.shape, mesh), specs, state)
    return jax.device_put(state, shardings), shardings


def recipe_rules(cfg) -> list[tuple]:
    """qat mode's rule for its targeted layers first, then the config's rules, then its recipe;
    names resolved through the run's recorded definitions (``run_recipes.resolve``)."""
    return finetune.qat_rules(cfg) + run_recipes.rules(cfg) + [(".*", run_recipes.resolve(cfg, cfg.recipe))]


def make_optimizer(cfg, policy):
    o = cfg.optim
    schedule = optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps, max(cfg.train.steps, o.warmup_steps + 1),
                                                  end_value=o.lr * o.min_lr_ratio)
    inner = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                        optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
    return policy.optimizer(inner, key=jax.random.key(cfg.seed + 1)), schedule


def train(cfg, workdir: str, stop_at: int | None = None, resume_override: bool = False,
          library_logs: bool = False) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the last metrics. STATUS tracks it.

    Checked before anything starts (``ConfigError``, one line; no run directory is made): the
    config's values and names (``config_check.check``), the mesh and the workdir. Resuming
    under a config other than the run's config.json is refused, listing the changed fields,
    unless ``resume_override`` (recorded in config_history.jsonl and log.txt). SIGTERM and
    SIGINT (Ctrl-C; a second one stops at once) save a checkpoint and stop: the result's
    ``interrupted`` names the signal, ``exit_code(result)`` is 128 + its number.
    ``stop_at``: leave after that step as SIGTERM would (checkpoint, STATUS stays running),
    for preemptible time slots; re-running resumes. ``library_logs``: orbax's and other
    libraries' INFO lines too (default: WARNING and above).
    """
    t0 = time.perf_counter()
    imported = imports.from_config(cfg)  # first: the user's modules register the names checked next
    config_check.check(cfg, jax.device_count())
    mesh = make_mesh(cfg)
    _check_kernels_fit(cfg, mesh)
    try:
        run = RunDir(workdir, writer=jax.process_index() == 0)
    except OSError as e:
        raise ConfigError(f"workdir {workdir!r} cannot be a run directory: {e.strerror or e}"
                          + (" (a file is in the way)" if isinstance(e, (FileExistsError, NotADirectoryError)) else "")
                          ) from None
    new_config = config_check.run_config(cfg)
    changed = _resume_changes(run, new_config, resume_override)
    handler = run.attach_log(library_logs)
    if imported:
        log.info("imported (config imports): %s", ", ".join(imported))
    before, reason = run.status()
    if before == "failed":  # kept in log.txt: STATUS is rewritten below
        log.info("the previous attempt failed: %s", reason)
    if changed:
        log.warning("resuming under a changed config (resume_override): %s", config_check.describe_changes(changed))
    run.write_config(new_config)
    run.set_status("running")
    stop = {"signal": None}

    def on_signal(signum, frame):
        if signum == signal.SIGINT and signal.SIGINT in (stop["signal"], stop.get("asked")):
            raise KeyboardInterrupt  # a second Ctrl-C: no checkpoint
        stop["asked"] = signum  # acted on at the next step's agree_on_stop, in every process at one step

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    forget = distributed.on_peer_lost(lambda reason: run.set_status("failed", reason))
    try:
        result = _train(cfg, run, mesh, stop, stop_at)
        if stop["signal"] is None:
            run.set_status("done")
        else:
            how = _stop_name(stop["signal"])
            if isinstance(stop["signal"], int):
                result["interrupted"] = how
                how += f" (exit code {exit_code(result)})"
            run.set_status("running", f"interrupted by {how} at step {result['step']}; rerun to resume")
        log.info("%s", summary(result, time.perf_counter() - t0, cfg.data.batch_size * cfg.data.seq_len))
        return result
    except Exception as e:
        _log_traceback(handler, e)
        run.set_status("failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        for s, before in previous.items():
            signal.signal(s, before)
        forget()
        run.detach_log(handler)


def exit_code(result: dict) -> int:
    """The exit status of a training process that returned ``result``: 128 + the signal's number
    for a run stopped by a signal (SIGTERM: 143, SIGINT: 130), else 0."""
    name = result.get("interrupted")
    return 128 + int(signal.Signals[name]) if name else 0


def summary(result: dict, seconds: float, tokens_per_step: int) -> str:
    """The end-of-run line: steps, tokens, final train and validation loss, wall time."""
    parts = [f"run {'interrupted by ' + result['interrupted'] if 'interrupted' in result else 'ended'} at step "
             f"{result['step']}", f"{result['step'] * tokens_per_step:,} tokens"]
    for key, label in (("loss", "train loss"), ("val_loss", "val loss"), ("val_quantized_loss", "val loss quantized")):
        if key in result:
            parts.append(f"{label} {result[key]:.4f}")
    parts.append(f"{seconds:.1f}s")
    return "summary: " + ", ".join(parts)


def _stop_name(what) -> str:
    return signal.Signals(what).name if isinstance(what, int) else str(what)


def _resume_changes(run: RunDir, new_config: dict, override: bool) -> dict:
    """The fields in which ``new_config`` differs from the run's config.json when there is a
    checkpoint to resume; raises ConfigError listing them unless ``override`` (then recorded).
    Every process decides from the files as they were before process 0 rewrites config.json
    (``gather_flags`` is the barrier), and all refuse if any one does."""
    old = run.read_config()
    step = latest_on_disk(run.checkpoints)
    changed = config_check.changes(old, new_config) if old is not None and step is not None else {}
    refused = [i for i, bad in enumerate(distributed.gather_flags(bool(changed) and not override)) if bad]
    if refused and jax.process_index() not in refused:
        raise ConfigError(f"{run.path}: process {refused[0]} refused to resume its run under this config "
                          "(another config trained it; its error names the changed fields)")
    if refused:
        raise ConfigError(f"{run.path} holds a run (checkpoint at step {step}) trained with another config; "
                          f"changed: {config_check.describe_changes(changed)}. Train it elsewhere (another "
                          f"workdir), or resume it under this config with resume_override=True "
                          f"(experiments.train: --resume_override), which config_history.jsonl records")
    if changed:
        run.record_config_change({"resumed_from_checkpoint": step, "override": "resume_override",
                                  "changed": {k: {"old": a, "new": b} for k, (a, b) in changed.items()}})
    return changed


def _log_traceback(handler: logging.Handler, e: BaseException) -> None:
    """The failure's traceback into log.txt only (the terminal gets it from the raise)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "run failed: %s: %s", (type(e).__name__, e),
                            (type(e), e, e.__traceback__))
    handler.handle(record)


def make_mesh(cfg):
    """The config's mesh: ``mesh.devices`` devices (-1: all) with its axis sizes; ConfigError if they do not fit."""
    sizes = {k: v for k, v in cfg.mesh.items() if k != "devices"}
    devices = jax.devices() if cfg.mesh.devices == -1 else jax.devices()[:cfg.mesh.devices]
    try:
        return sharding.make_mesh(sizes, devices)
    except ValueError as e:
        raise ConfigError(" ".join(f"mesh: {e}".split())) from None


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
    init: dict | None = None  # where pretrained Params came from (finetune.load_pretrained)


def setup(cfg, mesh, pretrained: bool) -> Setup:
    """Builds ``cfg``'s model on ``mesh`` (from ``finetune.init_from`` when ``pretrained``), adds
    its adapters, splits trainable from frozen variables and initializes the optimizer."""
    _check_kernels_fit(cfg, mesh)
    if pretrained:
        finetune.check_init_from(cfg)
    mcfg, policy, model = make_model(cfg)
    init = finetune.load_pretrained(cfg, model) if pretrained else None
    full_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.state(model, nnx.Param))
    finetune.adapt(cfg, model)
    graphdef, eval_graphdef, params, frozen, rest = finetune.split(cfg, model)
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


def _train(cfg, run: RunDir, mesh, stop: dict, stop_at: int | None) -> dict:
    ft = finetune.settings(cfg)
    ckpt = Checkpointer(run.checkpoints, keep=cfg.train.keep_checkpoints)
    resuming = ckpt.latest_step() is not None
    # A resumed fine-tune restores its own checkpoint, never init_from again.
    built = setup(cfg, mesh, pretrained=bool(ft.init_from) and not resuming)
    mcfg, policy, graphdef, rest, state, tx, schedule = (built.mcfg, built.policy, built.graphdef, built.rest,
                                                          built.state, built.tx, built.schedule)
    log.info("model %s: %.1fM parameters (%d trainable); policy %s; mesh %s", cfg.model.size,
             mcfg.num_params() / 1e6, sum(x.size for x in jax.tree.leaves(state.params)), policy, dict(mesh.shape))
    first = mesh.devices.flat[0]
    log.info("devices: %d x %s (%s)", mesh.devices.size, first.device_kind, first.platform)
    memory = finetune.memory_summary(state, built.full_params, tx) if _is_finetune(ft) else None

    corpus = load_corpus(cfg)
    train_split, val_split = corpus.split()
    batches = lpdata.Batches(train_split, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
                             seed=config_check.data_seed(cfg), mesh=mesh)
    evals = lpdata.EvalBatches(val_split, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
                               max_batches=cfg.train.eval_batches, mesh=mesh)

    metrics = MetricsWriter(run.metrics, run.tensorboard, enabled=run.writer)
    start = 0
    if resuming:
        _, state, meta = ckpt.restore_latest(abstract(state))  # skips (and sets aside) unreadable ones
        batches.restore(meta["data"])
        start = int(state.step)
        metrics.truncate_after(start)
        log.info("resumed at step %d", start)
    elif dropped := metrics.truncate_after(-1):  # a start with no checkpoint begins the record again
        log.warning("no checkpoint in %s: starting at step 0; dropped %d metrics records of an earlier start",
                    run.checkpoints, dropped)
    if not resuming and built.init is not None:
        metrics.write(0, "init", built.init)

    loss_fn = make_loss_fn(graphdef, rest, jax.random.key(cfg.seed + 2))
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    train_step = jax.jit(make_train_step(loss_fn, tx, cfg.optim.grad_accum, policy.loss_scale != "none"),
                         in_shardings=(state_sh, lpdata.batch_sharding(mesh)), out_shardings=(state_sh, None),
                         donate_argnums=0)
    eval_step = jax.jit(make_eval_step(make_loss_fn(built.eval_graphdef, rest, jax.random.key(cfg.seed + 2))))
    frozen_of = lambda st: getattr(st, "frozen", None)  # noqa: E731

    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops = model_flops_per_token(mcfg, cfg.data.seq_len) * tokens_per_step
    telemetry_fn = None
    progress = Progress(cfg.train.steps, start, enabled=cfg.train.progress)
    last = {"step": start}
    t_last, step = time.perf_counter(), start
    compiled = None
    for step in range(start, cfg.train.steps):
        tokens = next(batches)
        if compiled is None:  # compiled ahead of time once: its memory analysis comes with it
            compiled = train_step.lower(state, tokens).compile()
            if memory is not None:
                memory.update(finetune.compiled_memory(compiled))
                log.info("memory: %s", ", ".join(f"{k}={v}" for k, v in memory.items()))
                if start == 0:
                    metrics.write(0, "memory", memory)
        state, m = compiled(state, tokens)
        done = step + 1
        if stop_at is not None and done >= stop_at:
            stop["signal"] = "stop_at"
        stop["signal"] = distributed.agree_on_stop(stop.pop("asked", None) or stop["signal"],
                                                   done % cfg.train.log_every == 0)
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            m = jax.device_get(m)
            if not math.isfinite(float(m["loss"])) and policy.loss_scale == "none":
                if isinstance(state, FinetuneState):
                    raise NonFiniteLoss(f"loss is {float(m['loss'])} at step {done} (checked every "
                                        f"{cfg.train.log_every} steps; adapter runs have no layer telemetry)")
                telemetry_fn = telemetry_fn or make_telemetry_fn(mcfg, recipe_rules(cfg), cfg.seed)
                inter, _ = telemetry_fn(state.params, tokens, state.amax)
                bad = nonfinite_params(state.params)
                raise NonFiniteLoss(f"loss is {float(m['loss'])} at step {done} (checked every "
                                    f"{cfg.train.log_every} steps); first non-finite: {first_nonfinite(inter)}; "
                                    f"non-finite parameters: {', '.join(bad[:6]) or 'none'}")
            dt = (time.perf_counter() - t_last) / cfg.train.log_every
            t_last = time.perf_counter()
            values = {**m, "lr": float(schedule(done - 1)), "step_time_s": dt,
                      "tokens": done * tokens_per_step, "tokens_per_s": tokens_per_step / dt}
            peak = peak_flops(jax.devices()[0])
            if peak:
                values["mfu"] = flops / dt / (peak * jax.device_count())
            metrics.write(done, "train", values)
            progress.update(done, values)
            last = {"step": done, **{k: float(v) for k, v in values.items()}}
        if cfg.train.telemetry_every and done % cfg.train.telemetry_every == 0:
            telemetry_fn = telemetry_fn or make_telemetry_fn(mcfg, recipe_rules(cfg), cfg.seed)
            metrics.write(done, "telemetry", flatten(*jax.device_get(telemetry_fn(state.params, tokens, state.amax))))
        if done % cfg.train.eval_every == 0 or done == cfg.train.steps:
            ev = evaluate(eval_step, state.params, evals, mesh, corpus.bytes_per_token, frozen_of(state), state.amax)
            metrics.write(done, "val", ev)
            log.info("step %d: validation loss %.4f (%.4f bits/byte)", done, ev["loss"], ev["bits_per_byte"])
            last.update({f"val_{k}": v for k, v in ev.items()})
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps or stop["signal"]:
            ckpt.save(done, state, {"data": batches.state(), "step": done}, force=bool(stop["signal"]))
        if stop["signal"]:
            log.warning("%s: saved step %d and stopping", _stop_name(stop["signal"]), done)
            break
    last["step"] = int(jax.device_get(state.step))
    if ft.eval_quantized and start < cfg.train.steps == last["step"]:
        g, p, r = finetune.quantized_model(cfg, built.eval_graphdef, state.params, frozen_of(state), rest, state.amax)
        ev = evaluate(jax.jit(make_eval_step(make_loss_fn(g, r, jax.random.key(cfg.seed + 2)))), p, evals, mesh,
                      corpus.bytes_per_token)
        metrics.write(last["step"], "val_quantized", ev)
        log.info("validation loss with weights in %s: %.4f", ft.eval_quantized, ev["loss"])
        last.update({f"val_quantized_{k}": v for k, v in ev.items()})
    if memory is not None:
        last["memory"] = memory
    ckpt.close()
    metrics.close()
    progress.close()
    return last


def _is_finetune(ft) -> bool:
    return bool(ft.init_from) or ft.mode != "full"


def load_corpus(cfg) -> lpdata.Corpus:
    """The run config's corpus: ``data.source`` / ``data.path``, restricted to ``data.include`` /
    ``data.exclude`` ("" or absent in older configs: no restriction)."""
    d = cfg.data
    return lpdata.load(d.source, d.path or None, include=d.get("include") or None, exclude=d.get("exclude") or None)


def evaluate(eval_step, params, evals, mesh, bytes_per_token: float = 1.0, frozen=None, amax=None) -> dict:
    total, count = 0.0, 0.0
    for i in range(len(evals)):
        tokens, valid = evals.global_batch(i, mesh)
        s, n = eval_step(params, tokens, jnp.asarray(valid), frozen, amax)
        total, count = total + float(s), count + float(n)
    loss = total / max(count, 1.0)
    return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0))),
            "bits_per_byte": loss / math.log(2) / bytes_per_token}
