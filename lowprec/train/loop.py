"""The training loop: ``train(cfg, workdir)`` checks the config, prepares the run directory and
runs ``_train``'s phases (build, restore or start, the steps, the end); metrics, checkpoints, resume.

The top of ``lowprec.train``'s chain: it imports ``build`` (mesh, model, optimizer, state,
corpus) and ``finetune`` (``init_from``, ``eval_quantized``, memory records), which import
nothing from it. The construction functions it once held (``make_model``, ``build_model``,
``make_optimizer``, ``setup``, ``load_corpus``, ...) are ``build``'s, importable from here as before.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lowprec import data as lpdata
from lowprec.train import build, config_check, distributed, finetune, imports
# Construction from a run config lives in build; these names stay importable from the loop.
from lowprec.train.build import (  # noqa: F401
    Setup, build_model, check_kernels_fit, load_corpus, make_mesh, make_model, make_optimizer, recipe_rules, setup,
    shard,
)
from lowprec.train.checkpoint import CheckpointError, Checkpointer, abstract, latest_on_disk
from lowprec.train.config_check import ConfigError
from lowprec.train.metrics import MetricsWriter
from lowprec.train.progress import Progress, model_flops_per_token, peak_flops
from lowprec.train.rundir import RunDir
from lowprec.train.step import (
    FinetuneState, make_eval_step, make_loss_fn, make_seeds_eval_step, make_seeds_train_step, make_train_step, stack,
    unstack,
)
from lowprec.train.telemetry import first_nonfinite, flatten, make_telemetry_fn, nonfinite_params

log = logging.getLogger(__name__)

class NonFiniteLoss(RuntimeError):
    """The loss went inf/NaN; the message names the step (and the first non-finite layers)."""


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
    libraries' INFO lines too (default: WARNING and above). ``train.seeds_per_process`` N > 1:
    ``workdir`` holds the run directories of seeds ``seed``..``seed``+N-1, trained in this process
    as a vmapped axis (``_train_seeds``); the result lists each seed's under ``seeds``.
    """
    t0 = time.perf_counter()
    imported = imports.from_config(cfg)  # first: the user's modules register the names checked next
    cfg = finetune.resolve_model(cfg)  # init_from_hf's sizes into model.*; data.tokenizer checked
    mesh = _check(cfg)
    if seeds_per_process(cfg) > 1:  # seeds cfg.seed.. as a vmapped axis, each in its own run directory
        return _train_seeds(cfg, workdir, mesh, imported, stop_at, resume_override, library_logs, t0)
    run, handler = _open_run(cfg, workdir, imported, resume_override, library_logs)
    stop = {"signal": None}
    previous = {s: signal.signal(s, _signal_handler(stop)) for s in (signal.SIGTERM, signal.SIGINT)}
    forget = distributed.on_peer_lost(lambda reason: run.set_status("failed", reason))
    try:
        result = _train(cfg, run, mesh, stop, stop_at)
        _record_end(run, result, stop)
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


def _check(cfg):
    """The config's mesh, once the config's values and names, the mesh and its kernels are
    checked (``ConfigError``: nothing is made before)."""
    config_check.check(cfg, jax.device_count())
    mesh = make_mesh(cfg)
    check_kernels_fit(cfg, mesh)
    check_seeds(cfg, mesh)
    return mesh


def _open_run(cfg, workdir: str, imported: list, resume_override: bool, library_logs: bool):
    """(the run directory, its log.txt handler): made or reopened, a resume under a changed
    config refused or recorded (``_resume_changes``), config.json written, STATUS running."""
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
    return run, handler


def _signal_handler(stop: dict):
    """The SIGTERM/SIGINT handler: asks ``stop`` to stop at the next step; a second Ctrl-C stops at once."""
    def on_signal(signum, frame):
        if signum == signal.SIGINT and signal.SIGINT in (stop["signal"], stop.get("asked")):
            raise KeyboardInterrupt  # a second Ctrl-C: no checkpoint
        stop["asked"] = signum  # acted on at the next step's agree_on_stop, in every process at one step
    return on_signal


def _record_end(run: RunDir, result: dict, stop: dict) -> None:
    """STATUS of a run that returned: done, or still running after a stop (the result's
    ``interrupted`` names a signal)."""
    if stop["signal"] is None:
        run.set_status("done")
        return
    how = _stop_name(stop["signal"])
    if isinstance(stop["signal"], int):
        result["interrupted"] = how
        how += f" (exit code {exit_code(result)})"
    run.set_status("running", f"interrupted by {how} at step {result['step']}; rerun to resume")


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


@dataclasses.dataclass
class _Parts:
    """What the phases of one run share: its config and mesh, what ``build.setup`` built, its
    checkpoints, data, metrics and (fine-tunes) memory record."""

    cfg: Any
    run: RunDir
    mesh: Any
    built: Setup
    ckpt: Checkpointer
    resuming: bool        # a checkpoint is there to restore
    corpus: lpdata.Corpus
    batches: lpdata.Batches
    evals: lpdata.EvalBatches
    metrics: MetricsWriter
    memory: dict | None   # fine-tunes: bytes of parameters, frozen storage and optimizer state


def _train(cfg, run: RunDir, mesh, stop: dict, stop_at: int | None) -> dict:
    """A checked run in its prepared directory, in four phases: build its state and data,
    restore its checkpoint or start, the steps, the end. Returns the last metrics."""
    p = _build(cfg, run, mesh)
    state, start = _restore_or_start(p)
    progress = Progress(cfg.train.steps, start, enabled=cfg.train.progress)
    state, last = _steps(p, state, start, stop, stop_at, progress)
    return _finish(p, state, start, last, progress)


def _build(cfg, run: RunDir, mesh, corpus: lpdata.Corpus | None = None) -> _Parts:
    """The run's model, state and optimizer (``setup``; from ``finetune.init_from`` unless a
    checkpoint is there to resume: a resumed fine-tune restores its own, never init_from again),
    logged; its corpus (``corpus`` if given: seeds of one process share it), batch iterators and
    metrics writer."""
    ft = cfg.finetune
    ckpt = Checkpointer(run.checkpoints, keep=cfg.train.keep_checkpoints)
    resuming = ckpt.latest_step() is not None
    load_params = None
    if (ft.init_from or ft.init_from_hf) and not resuming:
        finetune.check_init_from(cfg)
        load_params = finetune.load_pretrained
    built = setup(cfg, mesh, load_params)
    log.info("model %s: %.1fM parameters (%d trainable); policy %s; mesh %s", cfg.model.size,
             built.mcfg.num_params() / 1e6, sum(x.size for x in jax.tree.leaves(built.state.params)), built.policy,
             dict(mesh.shape))
    first = mesh.devices.flat[0]
    log.info("devices: %d x %s (%s)", mesh.devices.size, first.device_kind, first.platform)
    memory = finetune.memory_summary(built.state, built.full_params, built.tx) if _is_finetune(ft) else None

    corpus = load_corpus(cfg) if corpus is None else corpus
    train_split, val_split = corpus.split()
    batches = lpdata.Batches(train_split, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
                             seed=config_check.data_seed(cfg), mesh=mesh)
    evals = lpdata.EvalBatches(val_split, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
                               max_batches=cfg.train.eval_batches, mesh=mesh)
    metrics = MetricsWriter(run.metrics, run.tensorboard, enabled=run.writer)
    return _Parts(cfg, run, mesh, built, ckpt, resuming, corpus, batches, evals, metrics, memory)


def _restore_or_start(p: _Parts):
    """(state, first step): the latest readable checkpoint's state and data position (metrics
    after it dropped), or the built state at step 0 (an earlier start's metrics dropped; a
    fine-tune's ``init`` record written)."""
    state, start = p.built.state, 0
    if p.resuming:
        _, state, meta = p.ckpt.restore_latest(abstract(state))  # skips (and sets aside) unreadable ones
        p.batches.restore(meta["data"])
        start = int(state.step)
        p.metrics.truncate_after(start)
        log.info("resumed at step %d", start)
    elif dropped := p.metrics.truncate_after(-1):  # a start with no checkpoint begins the record again
        log.warning("no checkpoint in %s: starting at step 0; dropped %d metrics records of an earlier start",
                    p.run.checkpoints, dropped)
    if not p.resuming and p.built.init is not None:
        p.metrics.write(0, "init", p.built.init)
    return state, start



def _update_stop(stop: dict, done: int, stop_at: int | None, at_log: bool) -> None:
    """``stop["signal"]`` after step ``done``: ``stop_at`` reached, or a signal asked for, as every
    process agrees (``distributed.agree_on_stop``)."""
    if stop_at is not None and done >= stop_at:
        stop["signal"] = "stop_at"
    stop["signal"] = distributed.agree_on_stop(stop.pop("asked", None) or stop["signal"], at_log)

def _steps(p: _Parts, state, start: int, stop: dict, stop_at: int | None, progress: Progress):
    """(state, last metrics) after steps ``start`` to ``train.steps``, or up to a stop (a
    signal, ``stop_at``; agreed by every process at one step). Every ``log_every`` steps the
    train metrics (and the loss's finiteness), every ``telemetry_every`` the layer telemetry,
    every ``eval_every`` validation, every ``checkpoint_every`` (and at a stop) a checkpoint."""
    cfg, built = p.cfg, p.built
    loss_fn = make_loss_fn(built.graphdef, built.rest, jax.random.key(cfg.seed + 2))
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    train_step = jax.jit(make_train_step(loss_fn, built.tx, cfg.optim.grad_accum, built.policy.loss_scale != "none"),
                         in_shardings=(state_sh, lpdata.batch_sharding(p.mesh)), out_shardings=(state_sh, None),
                         donate_argnums=0)
    eval_step = jax.jit(make_eval_step(make_loss_fn(built.eval_graphdef, built.rest, jax.random.key(cfg.seed + 2))))
    telemetry_fn = functools.cache(lambda: make_telemetry_fn(built.mcfg, recipe_rules(cfg), cfg.seed,
                                                             build.execution(cfg)))
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops = model_flops_per_token(built.mcfg, cfg.data.seq_len) * tokens_per_step
    last = {"step": start}
    t_last = time.perf_counter()
    compiled = None
    for step in range(start, cfg.train.steps):
        tokens = next(p.batches)
        if compiled is None:
            compiled = _compile(p, train_step, state, tokens, start)
        state, m = compiled(state, tokens)
        done = step + 1
        _update_stop(stop, done, stop_at, done % cfg.train.log_every == 0)
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            m = jax.device_get(m)
            _check_finite(p, state, m, tokens, done, telemetry_fn)
            dt = (time.perf_counter() - t_last) / cfg.train.log_every
            t_last = time.perf_counter()
            values = _train_values(p, m, done, dt, tokens_per_step, flops)
            p.metrics.write(done, "train", values)
            progress.update(done, values)
            last = {"step": done, **{k: float(v) for k, v in values.items()}}
        if cfg.train.telemetry_every and done % cfg.train.telemetry_every == 0:
            p.metrics.write(done, "telemetry",
                            flatten(*jax.device_get(telemetry_fn()(state.params, tokens, state.amax))))
        if done % cfg.train.eval_every == 0 or done == cfg.train.steps:
            ev = evaluate(eval_step, state.params, p.evals, p.mesh, p.corpus.bytes_per_token, _frozen(state),
                          state.amax)
            p.metrics.write(done, "val", ev)
            log.info("step %d: validation loss %.4f (%.4f bits/byte)", done, ev["loss"], ev["bits_per_byte"])
            last.update({f"val_{k}": v for k, v in ev.items()})
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps or stop["signal"]:
            p.ckpt.save(done, state, {"data": p.batches.state(), "step": done}, force=bool(stop["signal"]))
        if stop["signal"]:
            log.warning("%s: saved step %d and stopping", _stop_name(stop["signal"]), done)
            break
    return state, last


def _compile(p: _Parts, train_step, state, tokens, start: int):
    """The train step compiled ahead of time, once: a fine-tune's memory record gets its
    memory analysis (logged; written at step 0 by a run that starts)."""
    compiled = train_step.lower(state, tokens).compile()
    if p.memory is not None:
        p.memory.update(finetune.compiled_memory(compiled))
        log.info("memory: %s", ", ".join(f"{k}={v}" for k, v in p.memory.items()))
        if start == 0:
            p.metrics.write(0, "memory", p.memory)
    return compiled


def _train_values(p: _Parts, m: dict, done: int, dt: float, tokens_per_step: int, flops: float) -> dict:
    """Step ``done``'s train record: the step's metrics, learning rate, seconds a step (``dt``),
    tokens so far, tokens/s and, where the device's peak is known, MFU."""
    values = {**m, "lr": float(p.built.schedule(done - 1)), "step_time_s": dt,
              "tokens": done * tokens_per_step, "tokens_per_s": tokens_per_step / dt}
    peak = peak_flops(jax.devices()[0])
    if peak:
        values["mfu"] = flops / dt / (peak * jax.device_count())
    return values


def _check_finite(p: _Parts, state, m: dict, tokens, done: int, telemetry_fn) -> None:
    """NonFiniteLoss if the fetched loss ``m["loss"]`` is inf/NaN in a run without loss scaling,
    naming the step, the first non-finite layer and parameters (the layer telemetry's)."""
    cfg = p.cfg
    if math.isfinite(float(m["loss"])) or p.built.policy.loss_scale != "none":
        return
    if isinstance(state, FinetuneState):
        raise NonFiniteLoss(f"loss is {float(m['loss'])} at step {done} (checked every "
                            f"{cfg.train.log_every} steps; adapter runs have no layer telemetry)")
    inter, _ = telemetry_fn()(state.params, tokens, state.amax)
    bad = nonfinite_params(state.params)
    raise NonFiniteLoss(f"loss is {float(m['loss'])} at step {done} (checked every "
                        f"{cfg.train.log_every} steps); first non-finite: {first_nonfinite(inter)}; "
                        f"non-finite parameters: {', '.join(bad[:6]) or 'none'}")


def _finish(p: _Parts, state, start: int, last: dict, progress: Progress) -> dict:
    """``last`` with the final step, a fine-tune's quantized validation (``eval_quantized``, once
    the run reaches ``train.steps``) and its memory record; checkpoints, metrics and progress closed."""
    cfg, built = p.cfg, p.built
    ft = cfg.finetune
    last["step"] = int(jax.device_get(state.step))
    if ft.eval_quantized and start < cfg.train.steps == last["step"]:
        g, params, r = finetune.quantized_model(cfg, built.eval_graphdef, state.params, _frozen(state), built.rest,
                                                state.amax)
        ev = evaluate(jax.jit(make_eval_step(make_loss_fn(g, r, jax.random.key(cfg.seed + 2)))), params, p.evals,
                      p.mesh, p.corpus.bytes_per_token)
        p.metrics.write(last["step"], "val_quantized", ev)
        log.info("validation loss with weights in %s: %.4f", ft.eval_quantized, ev["loss"])
        last.update({f"val_quantized_{k}": v for k, v in ev.items()})
    if p.memory is not None:
        last["memory"] = p.memory
    p.ckpt.close()
    p.metrics.close()
    progress.close()
    return last


def _frozen(state):
    """A fine-tune's frozen variables (None for a TrainState)."""
    return getattr(state, "frozen", None)


def _is_finetune(ft) -> bool:
    return bool(ft.init_from or ft.init_from_hf) or ft.mode != "full"


def evaluate(eval_step, params, evals, mesh, bytes_per_token: float = 1.0, frozen=None, amax=None) -> dict:
    total, count = 0.0, 0.0
    for i in range(len(evals)):
        tokens, valid = evals.global_batch(i, mesh)
        s, n = eval_step(params, tokens, jnp.asarray(valid), frozen, amax)
        total, count = total + float(s), count + float(n)
    return _val_record(total, count, bytes_per_token)


def _val_record(total: float, count: float, bytes_per_token: float) -> dict:
    """A validation record from the summed loss over ``count`` sequences."""
    loss = float(total) / max(float(count), 1.0)
    return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0))),
            "bits_per_byte": loss / math.log(2) / bytes_per_token}


# ---- several seeds in one process (train.seeds_per_process) ----
SEEDS_FILE = "seeds.json"  # in the group directory: the seeds and their run directories


def seeds_per_process(cfg) -> int:
    """``train.seeds_per_process``."""
    return cfg.train.seeds_per_process


def seed_configs(cfg) -> list:
    """The configs of the seeds one process trains: ``seed`` = cfg.seed + i for i < seeds_per_process,
    each with ``train.seeds_per_process=1`` (what its run directory's config.json records: the
    config that trains it alone)."""
    out = []
    for i in range(seeds_per_process(cfg)):
        c = copy.deepcopy(cfg)
        with c.unlocked():
            c.seed = cfg.seed + i
            c.train.seeds_per_process = 1
        out.append(c)
    return out


def seed_dir(workdir: str, seed: int) -> str:
    """Seed ``seed``'s run directory in the group directory ``workdir``."""
    return os.path.join(workdir, f"seed-{seed}")


def check_seeds(cfg, mesh) -> None:
    """ConfigError (one line) for what training several seeds in one process does not support."""
    n = seeds_per_process(cfg)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"train.seeds_per_process must be an integer >= 1; got {n!r}")
    if n == 1:
        return
    ft = cfg.finetune
    if mesh.devices.size != 1 or jax.process_count() != 1:
        raise ConfigError(f"train.seeds_per_process={n} trains on one device of one process: set mesh.devices=1 "
                          f"(the mesh has {mesh.devices.size} devices, {jax.process_count()} processes)")
    if ft.mode != "full" or ft.init_from or ft.init_from_hf or ft.eval_quantized:
        raise ConfigError(f"train.seeds_per_process={n} trains from scratch only: finetune.mode must be 'full' and "
                          "finetune.init_from, finetune.init_from_hf, finetune.eval_quantized empty")


def _train_seeds(cfg, workdir: str, mesh, imported: list, stop_at, resume_override: bool, library_logs: bool,
                 t0: float) -> dict:
    """``train`` for ``train.seeds_per_process`` > 1: seeds cfg.seed.. trained as a leading vmapped
    axis of the state and batches, each in its own run directory ``<workdir>/seed-<s>`` (config.json
    with its seed and seeds_per_process=1, metrics, checkpoints, STATUS, log.txt as its run alone
    would write them: resumable alone or with the group). ``workdir`` holds seeds.json and a STATUS
    of the group. Returns {"step", "seeds": {seed: its run's result}} (``interrupted`` after a signal)."""
    try:
        group = RunDir(workdir)
    except OSError as e:
        raise ConfigError(f"workdir {workdir!r} cannot be a directory of seed runs: {e.strerror or e}") from None
    cfgs = seed_configs(cfg)
    seeds = [c.seed for c in cfgs]
    opened = []
    try:
        for c in cfgs:
            opened.append(_open_run(c, seed_dir(workdir, c.seed), imported, resume_override, library_logs))
    except BaseException:
        for run, handler in reversed(opened):
            run.detach_log(handler)
        raise
    runs = [run for run, _ in opened]
    with open(os.path.join(group.path, SEEDS_FILE), "w") as f:
        json.dump({"seeds": seeds, "dirs": [os.path.basename(r.path) for r in runs],
                   "config": config_check.run_config(cfg)}, f, indent=2, sort_keys=True, default=str)
    group.set_status("running")
    log.info("training seeds %s in one process (train.seeds_per_process=%d) under %s", seeds, len(seeds),
             group.path)
    stop = {"signal": None}
    previous = {s: signal.signal(s, _signal_handler(stop)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        results = _train_seed_group(cfgs, runs, mesh, stop, stop_at)
        for run, r in zip(runs, results):
            _record_end(run, r, stop)
        result = {"step": results[0]["step"], "seeds": dict(zip(seeds, results))}
        if "interrupted" in results[0]:
            result["interrupted"] = results[0]["interrupted"]
        _record_end(group, dict(result), stop)
        for s, r in result["seeds"].items():
            log.info("seed %d %s", s, summary(r, time.perf_counter() - t0, cfg.data.batch_size * cfg.data.seq_len))
        return result
    except Exception as e:
        for run, handler in opened:
            _log_traceback(handler, e)
            run.set_status("failed", f"{type(e).__name__}: {e}")
        group.set_status("failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        for s, before in previous.items():
            signal.signal(s, before)
        for run, handler in reversed(opened):
            run.detach_log(handler)


def _train_seed_group(cfgs: list, runs: list, mesh, stop: dict, stop_at) -> list[dict]:
    """``_train``'s phases for seeds of one process: each seed's parts built (one corpus), all
    restored at one step or started, stepped together; each seed's last metrics."""
    corpus = load_corpus(cfgs[0])
    parts = [_build(c, r, mesh, corpus) for c, r in zip(cfgs, runs)]
    state, start = _restore_or_start_seeds(parts)
    cfg = cfgs[0]
    progress = Progress(cfg.train.steps, start, enabled=cfg.train.progress)
    try:
        state, lasts = _steps_seeds(parts, state, start, stop, stop_at, progress)
        for i, (p, last) in enumerate(zip(parts, lasts)):
            last["step"] = int(jax.device_get(state.step[i]))
    finally:
        for p in parts:
            p.ckpt.close()
            p.metrics.close()
        progress.close()
    return lasts


def _restore_or_start_seeds(parts: list[_Parts]):
    """(the seeds' states stacked, first step): every seed restored at the newest step all of them
    have a checkpoint of (ConfigError where some seeds have checkpoints and others none), or
    started, as ``_restore_or_start`` does for one."""
    if len({p.resuming for p in parts}) > 1:
        have = [p.run.path for p in parts if p.resuming]
        raise ConfigError(f"train.seeds_per_process: {', '.join(have)} hold checkpoints, the other seeds' run "
                          "directories none; resume each alone (train.seeds_per_process=1) or start them afresh")
    restored = [_restore_or_start(p) for p in parts]
    starts = sorted({start for _, start in restored})
    if len(starts) > 1:  # a stop between seeds' saves: go back to the newest step all have
        common = set.intersection(*(set(p.ckpt.manager.all_steps()) for p in parts))
        if not common:
            raise CheckpointError(f"the seeds' latest checkpoints are at steps {starts} and no step has a "
                                  f"checkpoint of every seed ({', '.join(p.run.path for p in parts)})")
        step = max(common)
        log.warning("the seeds' latest checkpoints are at steps %s: resuming every seed at step %d", starts, step)
        restored = []
        for p in parts:
            state, meta = p.ckpt.restore(step, abstract(p.built.state))
            p.batches.restore(meta["data"])
            p.metrics.truncate_after(step)
            restored.append((state, step))
    return stack([state for state, _ in restored]), restored[0][1]


def _steps_seeds(parts: list[_Parts], state, start: int, stop: dict, stop_at, progress: Progress):
    """``_steps`` for the seeds' stacked state: one vmapped step for all, each seed's records,
    validation and checkpoints in its own run directory (the step time is the group's step)."""
    cfg, built = parts[0].cfg, parts[0].built
    seeds = jnp.asarray([p.cfg.seed for p in parts], jnp.int32)
    rest = stack([p.built.rest for p in parts])

    def make_tx(seed):
        return make_optimizer(cfg, built.policy, key=jax.random.key(seed + 1))[0]

    train_step = jax.jit(make_seeds_train_step(built.graphdef, make_tx, cfg.optim.grad_accum,
                                               built.policy.loss_scale != "none"), donate_argnums=2)
    eval_step = jax.jit(make_seeds_eval_step(built.eval_graphdef))
    telemetry = {}

    def telemetry_fn(i):
        if i not in telemetry:
            telemetry[i] = make_telemetry_fn(built.mcfg, recipe_rules(parts[i].cfg), parts[i].cfg.seed,
                                             build.execution(parts[i].cfg))
        return telemetry[i]

    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops = model_flops_per_token(built.mcfg, cfg.data.seq_len) * tokens_per_step
    lasts = [{"step": start} for _ in parts]
    t_last = time.perf_counter()
    for step in range(start, cfg.train.steps):
        tokens = [next(p.batches) for p in parts]
        state, m = train_step(seeds, rest, state, jnp.stack(tokens))
        done = step + 1
        _update_stop(stop, done, stop_at, done % cfg.train.log_every == 0)
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            m = jax.device_get(m)
            dt = (time.perf_counter() - t_last) / cfg.train.log_every
            t_last = time.perf_counter()
            for i, p in enumerate(parts):
                mi = {k: v[i] for k, v in m.items()}
                if not math.isfinite(float(mi["loss"])):  # one seed's state sliced out only then
                    try:
                        _check_finite(p, unstack(state, i), mi, tokens[i], done, functools.partial(telemetry_fn, i))
                    except NonFiniteLoss as e:
                        raise NonFiniteLoss(f"seed {p.cfg.seed}: {e}") from None
                values = _train_values(p, mi, done, dt, tokens_per_step, flops)
                p.metrics.write(done, "train", values)
                lasts[i] = {"step": done, **{k: float(v) for k, v in values.items()}}
                if i == 0:
                    progress.update(done, values)
        if cfg.train.telemetry_every and done % cfg.train.telemetry_every == 0:
            for i, p in enumerate(parts):
                one = unstack(state, i)
                p.metrics.write(done, "telemetry", flatten(*jax.device_get(telemetry_fn(i)(one.params, tokens[i],
                                                                                           one.amax))))
        if done % cfg.train.eval_every == 0 or done == cfg.train.steps:
            evs = _evaluate_seeds(eval_step, seeds, rest, state, parts[0].evals, parts[0].mesh,
                                  parts[0].corpus.bytes_per_token)
            for p, ev, last in zip(parts, evs, lasts):
                p.metrics.write(done, "val", ev)
                last.update({f"val_{k}": v for k, v in ev.items()})
            log.info("step %d: validation loss %s", done, ", ".join(
                f"seed {p.cfg.seed} {ev['loss']:.4f}" for p, ev in zip(parts, evs)))
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps or stop["signal"]:
            for i, p in enumerate(parts):
                p.ckpt.save(done, unstack(state, i), {"data": p.batches.state(), "step": done},
                            force=bool(stop["signal"]))
        if stop["signal"]:
            log.warning("%s: saved step %d of every seed and stopping", _stop_name(stop["signal"]), done)
            break
    return state, lasts


def _evaluate_seeds(eval_step, seeds, rest, state, evals, mesh, bytes_per_token: float) -> list[dict]:
    """``evaluate`` of every seed at once (the vmapped ``eval_step``): one record per seed."""
    total, count = np.zeros(len(seeds)), np.zeros(len(seeds))
    for i in range(len(evals)):
        tokens, valid = evals.global_batch(i, mesh)
        s, n = eval_step(seeds, rest, state.params, tokens, jnp.asarray(valid), state.amax)
        total, count = total + np.asarray(s, np.float64), count + np.asarray(n, np.float64)
    return [_val_record(t, c, bytes_per_token) for t, c in zip(total, count)]
