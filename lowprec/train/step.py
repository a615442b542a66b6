"""The jitted train and eval steps: plain ``jax.jit`` over ``nnx.split`` state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lowprec.models.llama import cross_entropy
from lowprec.nn import AmaxHistory
from lowprec.optim import LossScaleState, find_state, scale_loss


class TrainState(NamedTuple):
    """Everything a checkpoint holds besides the data position."""

    step: jax.Array      # int32 scalar: optimizer steps taken
    params: Any          # nnx.State of the model's Params
    opt_state: Any       # the optimizer's state (master weights, moments, loss scale)
    amax: Any = None     # nnx.State of the model's AmaxHistory variables (delayed scaling), or None


class FinetuneState(NamedTuple):
    """A TrainState plus the frozen part of the model (LoRA's base kernels, QLoRA's codes and
    scales): checkpointed with the run, so a resumed fine-tune needs nothing but its own run."""

    step: jax.Array
    params: Any          # nnx.State of the trainable variables (the adapters)
    opt_state: Any       # the optimizer's state over ``params`` only
    frozen: Any          # nnx.State of the frozen variables
    amax: Any = None     # as in TrainState


def split_histories(rest):
    """(the AmaxHistory variables of ``rest`` as a State, or None when it has none; the others).
    A delayed-scaling model's histories are step state: carried in ``TrainState.amax``."""
    amax, others = nnx.split_state(rest, AmaxHistory, ...)
    return (amax if nnx.to_flat_state(amax) else None), others


def make_loss_fn(graphdef, rest, key):
    """loss(params, tokens_BxT, step, frozen=None, amax=None) -> per-sequence mean next-token
    cross entropy (nats), (B,); ``frozen``: the model's frozen variables, when it has any (never
    differentiated); ``amax``: its amax histories, when it has any (``split_histories``)."""
    def loss_fn(params, tokens_BxT, step, frozen=None, amax=None):
        # Rebuilt as new Variables at this trace level: nnx.scan refuses variables of an outer one.
        extra = tuple(jax.tree.map(lambda x: x, v) for v in (frozen, amax) if v is not None)
        model = nnx.merge(graphdef, params, *extra, rest)
        logits_BxLxV = model(tokens_BxT[:, :-1], key=jax.random.fold_in(key, step))
        return cross_entropy(logits_BxLxV, tokens_BxT[:, 1:], reduce=False)
    return loss_fn


def make_train_step(loss_fn, tx: optax.GradientTransformation, grad_accum: int, loss_scaled: bool):
    """(state, tokens_BxT) -> (state, metrics); gradients accumulate over ``grad_accum``
    micro-batches with lax.scan (one compiled micro-step whatever the count). Amax histories
    (``state.amax``) become their gradient, the updated history (``ops.dot``); over
    micro-batches the newest amax is the largest of theirs."""
    gradients, apply = make_gradients(loss_fn, grad_accum, loss_scaled), make_apply(tx, loss_scaled)

    def train_step(state: TrainState | FinetuneState, tokens_BxT):
        return apply(state, *gradients(state, tokens_BxT))

    return train_step


def make_gradients(loss_fn, grad_accum: int, loss_scaled: bool):
    """(state, tokens_BxT) -> (mean loss, mean gradients, updated amax histories): the first half
    of ``make_train_step``'s step."""

    def micro(params, frozen, amax, opt_state, tokens, step):
        def scaled(p, h):
            loss = jnp.mean(loss_fn(p, tokens, step, frozen, h))
            return (scale_loss(loss, opt_state) if loss_scaled else loss), loss
        (_, loss), (grads, new_amax) = jax.value_and_grad(scaled, argnums=(0, 1), has_aux=True)(params, amax)
        return loss, grads, new_amax

    def gradients(state: TrainState | FinetuneState, tokens_BxT):
        frozen = getattr(state, "frozen", None)
        mb = tokens_BxT.reshape(grad_accum, -1, tokens_BxT.shape[-1])

        def body(carry, tokens):
            loss, grads, new_amax = micro(state.params, frozen, state.amax, state.opt_state, tokens, state.step)
            (loss0, grads0), amax0 = carry
            return ((loss0 + loss, jax.tree.map(jnp.add, grads0, grads)),
                    jax.tree.map(jnp.maximum, amax0, new_amax)), None

        zero = ((jnp.zeros((), jnp.float32), jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)),
                jax.tree.map(jnp.zeros_like, state.amax))
        ((loss, grads), amax), _ = jax.lax.scan(body, zero, mb)
        return loss / grad_accum, jax.tree.map(lambda g: g / grad_accum, grads), amax

    return gradients


def make_apply(tx: optax.GradientTransformation, loss_scaled: bool):
    """(state, loss, grads, amax) -> (state, metrics): the optimizer's update, the second half of
    ``make_train_step``'s step."""

    def apply(state: TrainState | FinetuneState, loss, grads, amax):
        with jax.named_scope("optimizer"):  # profiles attribute its kernels by this name
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        if loss_scaled:
            ls = find_state(opt_state, LossScaleState)
            metrics.update(loss_scale=ls.scale, skipped_steps=ls.skipped_steps)
        return state._replace(step=state.step + 1, params=params, opt_state=opt_state, amax=amax), metrics

    return apply


def make_eval_step(loss_fn):
    """(params, tokens_BxT, valid_B, frozen=None, amax=None) -> (sum of per-sequence losses,
    number of valid sequences)."""
    def eval_step(params, tokens_BxT, valid_B, frozen=None, amax=None):
        per_seq = loss_fn(params, tokens_BxT, jnp.int32(0), frozen, amax)
        w = valid_B.astype(jnp.float32)
        return jnp.sum(per_seq * w), jnp.sum(w)
    return eval_step


def stack(trees: list):
    """Pytrees of one structure as one whose leaves have a leading axis (seed i's at index i)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, i: int):
    """Index ``i`` of ``stack``'s leading axis: one seed's pytree."""
    return jax.tree.map(lambda x: x[i], tree)


def make_seeds_train_step(graphdef, make_tx, grad_accum: int, loss_scaled: bool):
    """(seeds_S, rest_S, state_S, tokens_SxBxT) -> (state_S, metrics_S): ``make_train_step`` over
    a leading axis of seeds, its gradients vmapped, its optimizer update one per seed (an
    unrolled loop: vmapped or under ``lax.map``, XLA:CPU fuses the elementwise update otherwise
    and rounds some of it differently in the last bit, and the runs drift apart; unrolled, the
    tiny model's state stays bit-identical to the runs alone). Seed ``s`` computes as its run alone
    would: its dropout key ``jax.random.key(s + 2)`` (``make_loss_fn``), its optimizer
    ``make_tx(s)`` (a traced seed; the policy's stochastic-rounding key is derived from it)."""
    def gradients(seed, rest, state, tokens_BxT):
        return make_gradients(make_loss_fn(graphdef, rest, jax.random.key(seed + 2)), grad_accum, loss_scaled)(
            state, tokens_BxT)

    def train_step(seeds, rest, state, tokens_SxBxT):
        loss, grads, amax = jax.vmap(gradients)(seeds, rest, state, tokens_SxBxT)
        out = [make_apply(make_tx(seeds[i]), loss_scaled)(*(unstack(t, i) for t in (state, loss, grads, amax)))
               for i in range(seeds.shape[0])]  # unrolled: each seed's update compiled as its run alone's
        return stack([o[0] for o in out]), stack([o[1] for o in out])

    return train_step


def make_seeds_eval_step(graphdef):
    """(seeds_S, rest_S, params_S, tokens_BxT, valid_B, amax_S) -> (sums_S, counts_S):
    ``make_eval_step`` vmapped over seeds, every seed on the same validation batch."""
    def one(seed, rest, params, tokens_BxT, valid_B, amax):
        return make_eval_step(make_loss_fn(graphdef, rest, jax.random.key(seed + 2)))(params, tokens_BxT, valid_B,
                                                                                          None, amax)
    return jax.vmap(one, in_axes=(0, 0, 0, None, None, 0))
