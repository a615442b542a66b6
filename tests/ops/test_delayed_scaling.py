"""Delayed scaling in GEMMs: scales from an amax history, the updated history as its gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lowprec as lp
from lowprec.models import llama
from lowprec.ops import ROLES
from lowprec.quant import Quantizer, scaling

DN = (((1,), (0,)), ((), ()))
DELAYED = lp.recipes.get("fp8_delayed")


def _data():
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (64, 32), jnp.bfloat16) * 3
    w = jax.random.normal(kw, (32, 16), jnp.bfloat16)
    g = jax.random.normal(kg, (64, 16), jnp.bfloat16) * 1e-3
    return x, w, g


def _amax(v) -> float:
    return float(np.max(np.abs(np.asarray(v, np.float64))))


def _run(recipe, x, w, g, history=None):
    kwargs = {} if history is None else {"amax_history": history}
    args = (x, w) if history is None else (x, w, history)
    f = (lambda x, w: lp.dot_general(x, w, DN, recipe)) if history is None else \
        (lambda x, w, h: lp.dot_general(x, w, DN, recipe, **kwargs | {"amax_history": h}))
    y, vjp = jax.vjp(f, *args)
    return (y,) + vjp(g)


def test_a_history_holding_the_current_amaxes_gives_current_scalings_bits():
    x, w, g = _data()
    h = lp.ops.init_amax_history(DELAYED)
    for role, v in (("fwd_act", x), ("fwd_weight", w), ("dgrad_grad", g), ("wgrad_grad", g)):
        h = h.at[ROLES.index(role), 5].set(_amax(v))  # not the newest entry: the max is what counts
    y1, dx1, dw1, _ = _run(DELAYED, x, w, g, h)
    y0, dx0, dw0 = _run("fp8", x, w, g)
    for a, b in ((y0, y1), (dx0, dx1), (dw0, dw1)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_the_gradient_of_the_history_is_the_rolled_history():
    x, w, g = _data()
    h = jax.random.uniform(jax.random.key(3), (len(ROLES), DELAYED.amax_history_len), jnp.float32, 1.0, 5.0)
    *_, new = _run(DELAYED, x, w, g, h)
    expected = np.asarray(h).copy()
    for role, v in (("fwd_act", x), ("fwd_weight", w), ("dgrad_grad", g), ("wgrad_grad", g)):
        i = ROLES.index(role)
        expected[i] = np.concatenate([[_amax(v)], np.asarray(h[i, :-1])])
    np.testing.assert_array_equal(np.asarray(new), expected)  # rows of the two reused roles unchanged


def test_scales_come_from_the_history_not_the_operand():
    """With a history max 1/8 of the current amax (the largest entries saturate), the forward
    equals fixed scales computed from the history, and differs from current scaling."""
    x, w, _ = _data()
    big = {"fwd_act": _amax(x) / 8, "fwd_weight": _amax(w) / 8}
    h = lp.ops.init_amax_history(DELAYED)
    for role, a in big.items():
        h = h.at[ROLES.index(role), 0].set(a)
    y = lp.dot_general(x, w, DN, DELAYED, amax_history=h)

    def fixed(q, a):
        s = float(scaling.scale_from_amax(jnp.float32(a), q.format, q.scale))
        return q.replace(source="fixed", fixed_scale=s)

    ref = DELAYED.replace(fwd_act=fixed(DELAYED.fwd_act, big["fwd_act"]),
                          fwd_weight=fixed(DELAYED.fwd_weight, big["fwd_weight"]),
                          dgrad_grad=lp.recipes.get("fp8").dgrad_grad, wgrad_grad=lp.recipes.get("fp8").wgrad_grad)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(lp.dot_general(x, w, DN, ref), np.float32))
    assert not np.array_equal(np.asarray(y, np.float32), np.asarray(lp.dot_general(x, w, DN, "fp8"), np.float32))


def test_errors_name_what_is_missing_or_wrong():
    x, w, _ = _data()
    with pytest.raises(ValueError, match="amax_history=lp.ops.init_amax_history"):
        lp.dot_general(x, w, DN, DELAYED)
    with pytest.raises(ValueError, match=r"shape \(6, 3\).*needs \(6, 16\)"):
        lp.dot_general(x, w, DN, DELAYED, amax_history=jnp.zeros((6, 3)))
    with pytest.raises(ValueError, match="Recipe.fwd_act: source='delayed' needs granularity='tensor'"):
        lp.ops.Recipe(fwd_act=Quantizer("e4m3fn", "token", source="delayed"))
    with pytest.raises(ValueError, match="amax_history_len must be an integer >= 1"):
        DELAYED.replace(amax_history_len=0)
    assert "amax_history_len=16" in str(DELAYED) and "amax_history_len" not in str(lp.recipes.get("fp8"))


def test_quant_dense_holds_and_updates_its_history():
    layer = lp.nn.QuantDense(32, 16, recipe="fp8_delayed", use_bias=False, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert isinstance(layer.amax_history, lp.nn.AmaxHistory) and layer.amax_history.shape == (6, 16)
    x, _, _ = _data()

    def loss(m):
        return jnp.sum(m(x).astype(jnp.float32) ** 2)

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Any(nnx.Param, lp.nn.AmaxHistory)))(layer)
    lp.nn.update_amax_histories(layer, grads)
    h = np.asarray(layer.amax_history[...])
    assert h[ROLES.index("fwd_act"), 0] == _amax(x)
    assert h[ROLES.index("fwd_weight"), 0] == _amax(layer.kernel[...].astype(jnp.bfloat16))
    assert h[ROLES.index("dgrad_grad"), 0] > 0 and not h[:, 1:].any()
    layer.recipe = lp.recipes.get("fp8")
    layer.sync_amax_history()
    assert layer.amax_history is None


def test_stacked_layers_get_one_history_each_through_scan():
    model = llama.Llama(llama.config_for("tiny"), nnx.Rngs(0))
    lp.nn.assign_recipes(model, [("lm_head", "bf16"), (".*", "fp8_delayed")])
    assert model.blocks.mlp.up.amax_history.shape == (2, 6, 16) and model.lm_head.amax_history is None
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, 256)

    def loss(m):
        return jnp.mean(llama.cross_entropy(m(tokens[:, :-1]), tokens[:, 1:]))

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Any(nnx.Param, lp.nn.AmaxHistory)))(model)
    lp.nn.update_amax_histories(model, grads)
    newest = np.asarray(model.blocks.attn.q.amax_history[...][:, :, 0])
    assert np.all(newest[:, [0, 1, 2, 4]] > 0) and not newest[:, [3, 5]].any()
    assert not np.array_equal(newest[0], newest[1])  # each layer recorded its own operands


def test_quant_einsum_scales_from_its_history_too():
    layer = lp.nn.QuantEinsum("btd,dnh->btnh", (32, 4, 8), recipe="fp8_delayed", dtype=jnp.bfloat16,
                              rngs=nnx.Rngs(0))
    assert layer.amax_history.shape == (6, 16)
    x = jax.random.normal(jax.random.key(2), (2, 5, 32), jnp.bfloat16)
    grads = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32) ** 2),
                     argnums=nnx.DiffState(0, nnx.Any(nnx.Param, lp.nn.AmaxHistory)))(layer)
    lp.nn.update_amax_histories(layer, grads)
    assert float(layer.amax_history[...][ROLES.index("fwd_act"), 0]) == _amax(x)
