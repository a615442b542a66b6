"""master_weights: small updates vanish without a master copy, an fp32 master tracks fp32
training, stochastic rounding without a master is unbiased, and any inner optimizer runs
unchanged on the fp32 master."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from optim_problems import REG_W0, REG_X, reg_loss, train, train_body

import lowprec as lp
from lowprec.optim import master_params, master_weights

LR, STEPS = 0.005, 1000
HALF_ULP = 2.0 ** -8  # half a bf16 ulp for weights in [1, 2)


@pytest.fixture(scope="module")
def fp32_run():
    w, _, losses, _, steps = train(optax.sgd(LR), jnp.asarray(REG_W0), reg_loss, STEPS)
    return np.asarray(w, np.float64), np.asarray(losses), np.asarray(steps)


def test_small_updates_vanish_without_master_copy(fp32_run):
    _, ref_losses, ref_steps = fp32_run
    assert ref_losses[-1] < 0.01 * ref_losses[0]  # the fp32 updates do train the model
    tx = master_weights(optax.sgd(LR), param_dtype=jnp.bfloat16, master_dtype=None)
    w, _, losses, _, steps = train(tx, jnp.asarray(REG_W0, jnp.bfloat16), reg_loss, STEPS)
    # The first step from the initial weights is below half an ulp, so it rounds away; the
    # weights then never move and every later step is the same.
    assert ref_steps[0] < HALF_ULP
    np.testing.assert_array_equal(np.asarray(w, np.float32), REG_W0)
    assert np.all(steps == 0) and np.all(losses == losses[0])


def test_fp32_master_keeps_training_and_tracks_fp32(fp32_run):
    w_ref, _, _ = fp32_run
    tx = master_weights(optax.sgd(LR), param_dtype=jnp.bfloat16)
    w, state, losses, _, _ = train(tx, jnp.asarray(REG_W0, jnp.bfloat16), reg_loss, STEPS)
    master = np.asarray(master_params(state), np.float64)
    assert np.all(np.diff(losses[::100]) < 0) and losses[-1] < 0.01 * losses[0]
    # Each gradient is taken at the master rounded to bf16 (off by at most half an ulp), so
    # for gradient descent on 0.5 w'Aw the master stays within cond(A) * |rounding error|.
    a = REG_X.T.astype(np.float64) @ REG_X / REG_X.shape[0]
    eig = np.linalg.eigvalsh(a)
    assert 1.0 <= master.min() and master.max() < 2.0 and LR * eig.max() < 1.0
    bound = eig.max() / eig.min() * HALF_ULP * np.sqrt(master.size)
    assert np.linalg.norm(master - w_ref) <= bound < 0.2 * np.linalg.norm(w_ref - REG_W0)
    # The parameters are exactly the master rounded to nearest bf16.
    np.testing.assert_array_equal(np.asarray(w, np.float32),
                                  master.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("rounding", ["stochastic", "nearest_even"])
def test_stochastic_rounding_is_unbiased(rounding):
    fractions, n, ulp = np.array([0.1, 0.37, -0.45]), 8192, 2.0 ** -7
    p = jnp.full((3, n), 1.5, jnp.bfloat16)
    step = jnp.asarray(np.repeat(fractions[:, None] * ulp, n, axis=1), jnp.float32)  # exact, below half an ulp
    tx = master_weights(optax.sgd(1.0), param_dtype=jnp.bfloat16, master_dtype=None, rounding=rounding, key=7)
    delta, _ = jax.jit(tx.update)(-step, tx.init(p), p)
    moved = np.asarray(optax.apply_updates(p, delta), np.float64) - 1.5
    for f, row in zip(fractions, moved):
        assert set(np.unique(row)) <= {0.0, np.copysign(ulp, f)}  # a neighbour, towards the step
        # P(move) is the step's fraction of an ulp under stochastic rounding, 0 under nearest
        # (binomial error bound, 5 sigma).
        expected = abs(f) if rounding == "stochastic" else 0.0
        assert abs(np.mean(row != 0) - expected) <= 5 * np.sqrt(abs(f) * (1 - abs(f)) / n)


def test_stochastic_rounding_without_master_tracks_fp32(fp32_run):
    w_ref, ref_losses, _ = fp32_run
    runs = 64

    def run(key):
        tx = master_weights(optax.sgd(LR), param_dtype=jnp.bfloat16, master_dtype=None,
                            rounding="stochastic", key=key)
        w, _, losses, _, _ = train_body(tx, jnp.asarray(REG_W0, jnp.bfloat16), reg_loss, STEPS)
        return w.astype(jnp.float32), losses

    w, losses = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(1), runs))
    w = np.asarray(w, np.float64)
    # The gradient is linear in w and every rounding is unbiased, so the mean over runs
    # follows the fp32 trajectory: within 4.5 standard errors, which are below half an ulp.
    stderr = w.std(axis=0, ddof=1) / np.sqrt(runs)
    assert np.all(np.abs(w.mean(axis=0) - w_ref) <= 4.5 * stderr) and stderr.max() < HALF_ULP
    assert np.asarray(losses)[:, -1].mean() < 0.01 * ref_losses[0]  # where nearest rounding stalls


INNERS = {
    "adamw+schedule via inject_hyperparams": optax.inject_hyperparams(optax.adamw)(
        learning_rate=optax.cosine_decay_schedule(1e-2, 10), weight_decay=0.1),
    "chain(clip, sgd+momentum, weight decay)": optax.chain(
        optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-2), optax.sgd(0.05, momentum=0.9)),
}


@pytest.mark.parametrize("name", INNERS)
def test_inner_runs_on_fp32_gradients_and_master(name):
    inner = INNERS[name]
    keys = jax.random.split(jax.random.key(3), 6)
    p0 = jax.random.normal(keys[0], (8, 16)).astype(jnp.bfloat16)
    grads = [jax.random.normal(k, (8, 16)).astype(jnp.bfloat16) for k in keys[1:]]
    tx = master_weights(inner, param_dtype="bf16")
    ref_update, update = jax.jit(inner.update), jax.jit(tx.update)
    ref, ref_state = p0.astype(jnp.float32), inner.init(p0.astype(jnp.float32))
    p, state = p0, tx.init(p0)
    for step, g in enumerate(grads, start=1):  # the gradients a bf16 model would hand the optimizer
        u, ref_state = ref_update(g.astype(jnp.float32), ref_state, ref)
        ref = optax.apply_updates(ref, u)
        delta, state = update(g, state, p)
        p = optax.apply_updates(p, delta)
        master = np.asarray(master_params(state))
        # The master is the fp32 run up to the compiler's own fp32 roundings (XLA compiles the
        # same arithmetic differently in two programs: x / c as x * (1/c), fused multiply-adds):
        # at most one fp32 ulp of the largest weight a step, where bf16 would be 2**16 of them.
        atol = step * np.spacing(np.abs(np.asarray(ref)).max())
        np.testing.assert_allclose(master, np.asarray(ref), rtol=0, atol=atol)
        np.testing.assert_array_equal(np.asarray(p), master.astype(ml_dtypes.bfloat16))


def test_fp8_parameters_through_a_quantizer():
    q = lp.Quantizer("e4m3fn", "tensor", scale="pow2_ceil")
    tx = master_weights(optax.adam(0.05), param_dtype=q)
    w0 = jnp.zeros(REG_W0.shape, jnp.bfloat16)
    w, state, losses, _, _ = train(tx, w0, reg_loss, 200)
    assert losses[-1] < 0.01 * losses[0]
    # Independent rounding of the master: scale 2**ceil(log2(amax / 448)), then e4m3fn.
    master = np.asarray(master_params(state), np.float64)
    scale = 2.0 ** np.ceil(np.log2(np.abs(master).max() / 448.0))
    expected = (master / scale).astype(np.float32).astype(ml_dtypes.float8_e4m3fn).astype(np.float64) * scale
    np.testing.assert_array_equal(np.asarray(w, np.float64), expected)
    assert len(np.unique(np.asarray(w))) < len(np.unique(master))  # the master is finer


@pytest.mark.parametrize("dtype, gap", [(jnp.bfloat16, 16), (jnp.float16, 13)])
def test_deltas_give_the_rounded_master_under_apply_updates(dtype, gap):
    # An inner optimizer that moves every master weight to a chosen target, from old
    # parameters and targets spread over many binades of the format.
    n, lo = 200_000, {jnp.bfloat16: -40, jnp.float16: -24}[dtype]
    rng = np.random.default_rng(5)
    old, target = (jnp.asarray(rng.normal(size=n) * 2.0 ** rng.integers(lo, 12, n), dtype) for _ in range(2))
    to_target = optax.GradientTransformation(lambda p: optax.EmptyState(),
                                             lambda g, s, p: (target.astype(jnp.float32) - p, s))
    tx = master_weights(to_target, param_dtype=dtype)
    delta, _ = jax.jit(tx.update)(jnp.zeros(n, dtype), tx.init(old), old)
    new = np.asarray(optax.apply_updates(old, delta), np.float64)
    t, o = np.asarray(target, np.float64), np.asarray(old, np.float64)
    exact = np.abs(t) >= 2.0 ** -gap * np.abs(o)
    assert exact.mean() > 0.7 and (~exact).sum() > 1000
    np.testing.assert_array_equal(new[exact], t[exact])
    assert np.all(np.abs(new - t)[~exact] <= 0.5 * np.spacing(np.abs(o[~exact]).astype(np.float32)))
