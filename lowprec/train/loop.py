"""The training loop: mesh, sharded state, jitted steps, eval, metrics, checkpoints, resume."""

from __future__ import annotations

import logging
import math
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lowprec import data as lpdata
from lowprec.models import llama
from lowprec.nn import assign_recipes
from lowprec.optim import get_policy
from lowprec.train import sharding
from lowprec.train.checkpoint import Checkpointer, abstract
from lowprec.train.metrics import MetricsWriter
from lowprec.train.progress import Progress, model_flops_per_token, peak_flops
from lowprec.train.rundir import RunDir
from lowprec.train.step import TrainState, make_eval_step, make_loss_fn, make_train_step
from lowprec.train.telemetry import first_nonfinite, flatten, make_telemetry_fn, nonfinite_params

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The loss went inf/NaN; the message names the step (and the first non-finite layers)."""


def build_model(cfg, mesh):
    """The model with its recipes assigned, its Params sharded on ``mesh`` by logical names."""
    policy = get_policy(cfg.policy)
    mcfg = llama.config_for(cfg.model.size, tie_embeddings=cfg.model.tie_embeddings, remat=cfg.model.remat,
                            dtype=policy.compute_dtype, param_dtype=policy.param_dtype,
                            vocab_size=cfg.model.vocab_size, attention=cfg.model.attention or None)
    model = llama.Llama(mcfg, nnx.Rngs(cfg.seed))
    assign_recipes(model, recipe_rules(cfg))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    specs = nnx.get_partition_spec(params)
    shardings = jax.tree.map(lambda spec, p: sharding.named_sharding(spec, p.shape, mesh), specs, params)
    params = jax.device_put(params, shardings)
    return mcfg, policy, graphdef, params, rest, shardings


def recipe_rules(cfg) -> list[tuple[str, str]]:
    return [tuple(r) for r in cfg.recipe_rules] + [(".*", cfg.recipe)]


def make_optimizer(cfg, policy):
    o = cfg.optim
    schedule = optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps, max(cfg.train.steps, o.warmup_steps + 1),
                                                  end_value=o.lr * o.min_lr_ratio)
    inner = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                        optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
    return policy.optimizer(inner, key=jax.random.key(cfg.seed + 1)), schedule


def train(cfg, workdir: str, stop_at: int | None = None) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the last metrics. STATUS tracks it.

    ``stop_at``: leave after that step as SIGTERM would (checkpoint, STATUS stays running),
    for preemptible time slots; re-running resumes.
    """
    run = RunDir(workdir, writer=jax.process_index() == 0)
    handler = run.attach_log()
    run.write_config(cfg.to_dict())
    run.set_status("running")
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda s, f: stop.update(signal=s))
    try:
        result = _train(cfg, run, stop, stop_at)
    except Exception as e:
        run.set_status("failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        logging.getLogger().removeHandler(handler)
    if stop["signal"] is None:
        run.set_status("done")
    else:
        run.set_status("running", f"interrupted ({stop['signal']}) at step {result['step']}; rerun to resume")
    return result


def _train(cfg, run: RunDir, stop: dict, stop_at: int | None) -> dict:
    sizes = {k: v for k, v in cfg.mesh.items() if k != "devices"}
    devices = jax.devices() if cfg.mesh.devices == -1 else jax.devices()[:cfg.mesh.devices]
    mesh = sharding.make_mesh(sizes, devices)
    mcfg, policy, graphdef, params, rest, param_shardings = build_model(cfg, mesh)
    log.info("model %s: %.1fM parameters; policy %s; mesh %s", cfg.model.size, mcfg.num_params() / 1e6,
             policy, dict(mesh.shape))
    tx, schedule = make_optimizer(cfg, policy)
    opt_state = jax.jit(tx.init)(params)
    state = sharding.onto_mesh(TrainState(jnp.zeros((), jnp.int32), params, opt_state), mesh)

    corpus = lpdata.load(cfg.data.source, cfg.data.path or None)
    train_split, val_split = corpus.split()
    batches = lpdata.Batches(train_split, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
                             seed=cfg.seed, mesh=mesh)
    evals = lpdata.EvalBatches(val_split, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
                               max_batches=cfg.train.eval_batches, mesh=mesh)

    ckpt = Checkpointer(run.checkpoints, keep=cfg.train.keep_checkpoints)
    metrics = MetricsWriter(run.metrics, run.tensorboard, enabled=run.writer)
    start = 0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(ckpt.latest_step(), abstract(state))
        batches.restore(meta["data"])
        start = int(state.step)
        metrics.truncate_after(start)
        log.info("resumed at step %d", start)

    loss_fn = make_loss_fn(graphdef, rest, jax.random.key(cfg.seed + 2))
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    train_step = jax.jit(make_train_step(loss_fn, tx, cfg.optim.grad_accum, policy.loss_scale != "none"),
                         in_shardings=(state_sh, lpdata.batch_sharding(mesh)), out_shardings=(state_sh, None),
                         donate_argnums=0)
    eval_step = jax.jit(make_eval_step(loss_fn))

    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops = model_flops_per_token(mcfg, cfg.data.seq_len) * tokens_per_step
    telemetry_fn = None
    progress = Progress(cfg.train.steps, start, enabled=cfg.train.progress)
    last = {"step": start}
    t_last, step = time.perf_counter(), start
    for step in range(start, cfg.train.steps):
        tokens = next(batches)
        state, m = train_step(state, tokens)
        done = step + 1
        if stop_at is not None and done >= stop_at:
            stop["signal"] = "stop_at"
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            m = jax.device_get(m)
            if not math.isfinite(float(m["loss"])) and policy.loss_scale == "none":
                telemetry_fn = telemetry_fn or make_telemetry_fn(mcfg, recipe_rules(cfg), cfg.seed)
                inter, _ = telemetry_fn(state.params, tokens)
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
            metrics.write(done, "telemetry", flatten(*jax.device_get(telemetry_fn(state.params, tokens))))
        if done % cfg.train.eval_every == 0 or done == cfg.train.steps:
            ev = evaluate(eval_step, state.params, evals, mesh, corpus.bytes_per_token)
            metrics.write(done, "val", ev)
            last.update({f"val_{k}": v for k, v in ev.items()})
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps or stop["signal"]:
            ckpt.save(done, state, {"data": batches.state(), "step": done}, force=bool(stop["signal"]))
        if stop["signal"]:
            log.warning("%s: saved step %d and stopping", stop["signal"], done)
            break
    last["step"] = int(jax.device_get(state.step))
    ckpt.close()
    metrics.close()
    progress.close()
    return last


def evaluate(eval_step, params, evals, mesh, bytes_per_token: float = 1.0) -> dict:
    total, count = 0.0, 0.0
    for i in range(len(evals)):
        tokens, valid = evals.global_batch(i, mesh)
        s, n = eval_step(params, tokens, jnp.asarray(valid))
        total, count = total + float(s), count + float(n)
    loss = total / max(count, 1.0)
    return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0))),
            "bits_per_byte": loss / math.log(2) / bytes_per_token}
