"""Loss scaling for fp16 training: scale the loss, unscale the gradients, skip non-finite steps.

fp16 gradients below 2**-24 flush to zero; multiplying the loss by S lifts them into range
(Micikevicius et al. 2017). Dynamic scaling halves S and skips the step when the gradients
hold an inf or NaN, and doubles S after ``growth_interval`` finite steps in a row.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowprec.optim.find import find_state


class LossScaleState(NamedTuple):
    """State of :func:`loss_scaling`; every field is a scalar worth logging.

    Attributes:
      scale: the current loss scale (float32); multiply the loss by it (:func:`scale_loss`).
      good_steps: finite steps in a row since the last skip or growth (int32).
      skipped_steps: steps skipped for inf/NaN gradients since init (int32, never reset).
      last_finite: whether the last step's gradients were all finite (bool).
      inner_state: the state of the wrapped optimizer (unchanged by a skipped step).
    """

    scale: jax.Array
    good_steps: jax.Array
    skipped_steps: jax.Array
    last_finite: jax.Array
    inner_state: Any


def loss_scaling(inner: optax.GradientTransformation, init_scale: float = 2.0 ** 15, *, dynamic: bool = True,
                 growth_interval: int = 2000, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 min_scale: float = 1.0, max_scale: float = 2.0 ** 24) -> optax.GradientTransformationExtraArgs:
    """Unscales gradients of a scaled loss in float32 and skips steps whose gradients are not finite.

    A skipped step returns zero updates and leaves ``inner``'s state untouched. With
    ``dynamic=True`` the scale is multiplied by ``backoff_factor`` on a skipped step (not
    below ``min_scale``) and by ``growth_factor`` after ``growth_interval`` finite steps in a
    row (not above ``max_scale``); with ``dynamic=False`` it stays ``init_scale`` (static
    scaling). Wrap it outermost, around :func:`master_weights`, so a skipped step keeps the
    parameters as they are.
    """
    _check_positive(init_scale=init_scale, min_scale=min_scale, max_scale=max_scale)
    if not min_scale <= init_scale <= max_scale:
        raise ValueError(f"init_scale={init_scale} must lie in [min_scale={min_scale}, max_scale={max_scale}]")
    if not growth_factor > 1.0:
        raise ValueError(f"growth_factor must be > 1; got {growth_factor}")
    if not 0.0 < backoff_factor < 1.0:
        raise ValueError(f"backoff_factor must be in (0, 1); got {backoff_factor}")
    if not isinstance(growth_interval, int) or growth_interval < 1:
        raise ValueError(f"growth_interval must be a positive integer; got {growth_interval!r}")
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return LossScaleState(scale=jnp.asarray(init_scale, jnp.float32), good_steps=jnp.zeros([], jnp.int32),
                              skipped_steps=jnp.zeros([], jnp.int32), last_finite=jnp.asarray(True),
                              inner_state=inner.init(params))

    def update(updates, state, params=None, **extra_args):
        grads = jax.tree.map(lambda g: g.astype(jnp.float32) / state.scale, updates)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))

        def apply(_):
            return inner.update(grads, state.inner_state, params, **extra_args)

        def skip(_):
            shapes = jax.eval_shape(apply, None)[0]
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), state.inner_state

        new_updates, inner_state = jax.lax.cond(finite, apply, skip, None)
        scale, good_steps = state.scale, jnp.where(finite, optax.safe_increment(state.good_steps), 0)
        if dynamic:
            grow = good_steps >= growth_interval
            scale = jnp.where(finite, jnp.where(grow, jnp.minimum(scale * growth_factor, max_scale), scale),
                              jnp.maximum(scale * backoff_factor, min_scale))
            good_steps = jnp.where(grow, 0, good_steps)
        return new_updates, LossScaleState(
            scale=scale, good_steps=good_steps, last_finite=finite, inner_state=inner_state,
            skipped_steps=jnp.where(finite, state.skipped_steps, optax.safe_increment(state.skipped_steps)))

    return optax.GradientTransformationExtraArgs(init, update)


def scale_loss(loss: jax.Array, opt_state) -> jax.Array:
    """``loss`` times the current scale of the :func:`loss_scaling` inside ``opt_state``, in
    float32 (an fp16 loss times 2**15 would overflow); differentiate this, not ``loss``."""
    return loss.astype(jnp.float32) * find_state(opt_state, LossScaleState).scale


def _check_positive(**values):
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive; got {value}")
