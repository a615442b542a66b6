"""Loss scaling: fp16 gradients below 2**-24 flush to zero; scaling the loss rescues them, and
a step whose gradients overflow is skipped while the scale backs off."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optim_problems import mlp_apply, mlp_data, mlp_params, train

from lowprec.optim import LossScaleState, find_state, loss_scaling, master_params, master_weights

DIMS = (8, 32, 4)  # in, hidden, out
X, Y = mlp_data(*DIMS, batch=64)
P0 = mlp_params(*DIMS)
C = 2.0 ** -24  # a small loss weight: the gradients of C * mse sit below fp16's range
STEPS = 300
ADAM = optax.adam(1e-2, eps=1e-30)  # scale-invariant, so C does not slow the fp32 run


def loss32(p):
    return C * jnp.mean((mlp_apply(p, X, jnp.float32) - Y) ** 2)


def loss16(p):
    return C * jnp.mean((mlp_apply(p, X, jnp.float16) - Y) ** 2)


def p16():
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float16), P0)


@pytest.fixture(scope="module")
def fp32_run():
    _, _, losses, grads, _ = train(ADAM, jax.tree.map(jnp.asarray, P0), loss32, STEPS)
    losses = np.asarray(losses)
    assert losses[-1] < 0.01 * losses[0]
    return losses, np.asarray(grads)


def test_fp16_without_loss_scaling_loses_small_gradients(fp32_run):
    fp32_losses, fp32_grads = fp32_run
    # The fp32 gradient at the output, in float64: below 2**-25, half fp16's smallest
    # subnormal, so the fp16 backward pass rounds it, and everything after it, to zero.
    out = np.tanh(X @ P0["w1"].astype(np.float64)) @ P0["w2"].astype(np.float64)
    assert np.abs(C * 2 * (out - Y) / Y.size).max() < 2.0 ** -25
    params, _, losses, grads, steps = train(master_weights(ADAM, param_dtype=jnp.float16), p16(), loss16, STEPS)
    assert fp32_grads[0] > 0 and np.all(np.asarray(grads) == 0)  # every fp16 gradient, every step
    assert np.all(np.asarray(steps) == 0)
    jax.tree.map(np.testing.assert_array_equal, params, p16())
    assert losses[-1] == losses[0] > 100 * fp32_losses[-1]


def test_dynamic_loss_scaling_skips_overflow_then_trains_like_fp32(fp32_run):
    fp32_losses, _ = fp32_run
    init = 2.0 ** 50  # the scaled output gradient overflows fp16 (max 65504) at first
    tx = loss_scaling(master_weights(ADAM, param_dtype=jnp.float16), init, growth_interval=STEPS, max_scale=init)
    _, state, losses, _, _ = train(tx, p16(), loss16, STEPS, True)
    s = find_state(state, LossScaleState)
    k = int(s.skipped_steps)  # each overflow halves the scale until the gradients fit
    assert k >= 1 and float(s.scale) == init * 0.5 ** k and int(s.good_steps) == STEPS - k
    assert int(find_state(state, optax.ScaleByAdamState).count) == STEPS - k  # skipped steps never reach Adam
    losses = np.asarray(losses)
    assert np.all(losses[:k + 1] == losses[0])  # nothing moved while skipping
    # From there on fp16 with loss scaling follows the fp32 run, k steps late: fp16 rounds
    # every forward and backward value (2**-11 relative), so every step's loss stays within
    # 5% of the fp32 run's, which falls by more than 100x.
    assert np.max(np.abs(np.log(losses[k:] / fp32_losses[:STEPS - k]))) < np.log(1.05)


def _expected_scales(finite, init, interval, dynamic, growth=2.0, backoff=0.5):
    """The rule, step by step: a static scale stays; a dynamic one backs off on a non-finite
    step and grows after ``interval`` finite ones in a row."""
    scale, good, out = init, 0, []
    for ok in finite:
        good = good + 1 if ok else 0
        if dynamic and not ok:
            scale *= backoff
        elif dynamic and good == interval:
            scale, good = scale * growth, 0
        out.append(scale)
    return out


@pytest.mark.parametrize("dynamic", [True, False])
def test_non_finite_steps_are_skipped_and_the_scale_follows_its_rule(dynamic):
    p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float16), {"w": P0["w1"], "b": P0["b1"]})
    tx = loss_scaling(master_weights(optax.sgd(0.1), param_dtype=jnp.float16), 2.0 ** 10, dynamic=dynamic,
                      growth_interval=2)
    state = tx.init(p)
    update = jax.jit(tx.update)
    poison = {5: jnp.inf, 6: jnp.nan}
    finite, scales = [], []
    for step in range(9):
        g = jax.tree.map(lambda a, s=step: jnp.full(a.shape, 2.0 ** -4 * (s + 1), jnp.float16), p)
        if step in poison:
            g["b"] = g["b"].at[0, 3].set(poison[step])
        before = state
        delta, state = update(g, state, p)
        new_p = optax.apply_updates(p, delta)
        s = find_state(state, LossScaleState)
        finite.append(step not in poison)
        scales.append(float(s.scale))
        assert bool(s.last_finite) == finite[-1]
        if step in poison:  # nothing moves: parameters, master, the inner optimizer's step count
            jax.tree.map(np.testing.assert_array_equal, new_p, p)
            jax.tree.map(np.testing.assert_array_equal, master_params(state), master_params(before))
            assert int(s.inner_state.count) == int(before.inner_state.count)
        else:
            assert not np.array_equal(np.asarray(new_p["w"]), np.asarray(p["w"]))
        p = new_p
    assert scales == _expected_scales(finite, 2.0 ** 10, 2, dynamic)
    assert int(find_state(state, LossScaleState).skipped_steps) == len(poison)
