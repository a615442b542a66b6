"""Quantized ``dot_general``: one custom_vjp computes the forward GEMM and both backward GEMMs,
each operand quantized by its role's Quantizer (see ``Recipe``).

Gradients: the grad-input GEMM's result is multiplied by the activation quantizer's estimator
derivative, the grad-weight GEMM's by the weight quantizer's (STE: by one). Scales are
constants, as in ``Quantizer``. OCC's clamp passes the gradient as the identity, as in
``Quantizer`` and the FP4 paper (whose backward GEMMs use the quantized operands): every
activation entry gets the estimator's derivative at its clamped scaled value. The separate
compensation GEMM ``residual x weight`` adds its weight gradient ``residual^T x grad``.
Stochastic rounding draws ``jax.random.fold_in(key, i)`` for the i-th role of ``ROLES``; a
Hadamard transform with signs from the key draws ``fold_in(key, len(ROLES) + j)`` for the j-th
GEMM (forward, grad-input, grad-weight), the same signs for both of its operands. A transformed
GEMM multiplies ``x H S`` and ``w`` transformed alike along their contraction (see
``Recipe.fwd_hadamard``); the backward GEMMs transform their own operands, so no gradient passes
through their transforms. With ``fwd_hadamard`` the backward GEMMs multiply the forward's
transformed operands (or, with ``requantize_from="forward"``, its quantized ones), the
estimators' derivatives multiply their results in that domain, and the inverse of the forward
transform maps each result back to its operand's.

Delayed scaling: roles whose Quantizer has ``source="delayed"`` are scaled from the largest
entry of their row of ``amax_history`` (rows ``ROLES``, newest amax first), and the gradient
with respect to ``amax_history`` is the *updated* history: each delayed role's row shifted by
one with this call's amax of its operand in front (forward roles from the forward pass, the
output-gradient roles from the backward pass); other rows come back unchanged. Assign it in
place of the old history after each step (one call per history and step: gradients of several
calls that share a history would add up).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lowprec.ops import cast_transpose, dims, native, operand, recipes, telemetry
from lowprec.ops.gemm import gemm
from lowprec.ops.operand import Operand
from lowprec.ops.recipe import HADAMARDS, ROLES, Recipe
from lowprec.quant import occ as occ_lib
from lowprec.quant import scaling
from lowprec.quant.quantizer import update_amax_history


def dot_general(lhs, rhs, dimension_numbers, recipe: Recipe | str = "none", key=None, *, precision=None,
                preferred_element_type=None, probe=None, amax_history=None, execution=None):
    """``lax.dot_general(lhs, rhs, dimension_numbers)`` with ``recipe``'s quantized GEMMs.

    ``lhs`` is the activation and ``rhs`` the weight. ``key`` (a ``jax.random`` key) is needed
    when a role rounds stochastically. With ``probe`` (``ops.telemetry.probe()``) it returns
    ``(y, stats)``: ``stats`` holds the forward roles' telemetry and the gradient with respect
    to ``probe`` holds the backward roles'. ``amax_history`` (``init_amax_history(recipe)``) is
    needed when a role uses delayed scaling; its gradient is the updated history.
    ``execution`` (a ``quant.Execution`` or its string or dict form; None: the recipe's own
    fields) chooses how the GEMMs and quantizers compute their bits (``Recipe.with_execution``).
    """
    recipe = recipes.get(recipe).with_execution(execution)
    amax_history = _check_history(recipe, amax_history)
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    stochastic = recipe.needs_key()
    if stochastic and key is None:
        what = "rounds stochastically" if set(stochastic) <= set(ROLES) else "draws random bits"
        raise ValueError(f"recipe {recipe.name or recipe} {what} in {', '.join(stochastic)}: "
                         "pass key=jax.random.key(...)")
    dtype = jnp.result_type(lhs.dtype, rhs.dtype)
    cfg = _Config(
        dn=dims.normalize(dimension_numbers, lhs.ndim, rhs.ndim), recipe=recipe, precision=precision,
        lhs_dtype=lhs.dtype.name, rhs_dtype=rhs.dtype.name, ndims=(lhs.ndim, rhs.ndim),
        compute_dtype=jnp.dtype(recipe.compute_dtype or dtype).name,
        out_dtype=jnp.dtype(preferred_element_type or recipe.out_dtype or dtype).name,
        telemetry=probe is not None, transposes=cast_transpose.resolve_transposes(recipe.fp8_transposes))
    y, stats = _qdot_jit(cfg, lhs, rhs, key, probe, amax_history)
    return y if probe is None else (y, stats)


def init_amax_history(recipe: Recipe | str) -> jax.Array:
    """Zeros of shape ``(len(ROLES), recipe.amax_history_len)``: an empty delayed-scaling
    history (until it holds an amax, a delayed role's scale is that of an amax of 1)."""
    return jnp.zeros((len(ROLES), recipes.get(recipe).amax_history_len), jnp.float32)


def _check_history(recipe: Recipe, history):
    delayed = recipe.delayed_roles()
    if not delayed:
        return None
    expected = (len(ROLES), recipe.amax_history_len)
    if history is None:
        raise ValueError(f"recipe {recipe.name or recipe} scales {', '.join(delayed)} from an amax history: pass "
                         f"amax_history=lp.ops.init_amax_history(recipe) (shape {expected}) and keep its gradient")
    history = jnp.asarray(history)
    if history.shape != expected:
        raise ValueError(f"amax_history has shape {history.shape}; recipe {recipe.name or 'custom'} needs {expected} "
                         f"(rows {', '.join(ROLES)}; amax_history_len={recipe.amax_history_len})")
    return history.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Config:
    dn: dims.DimensionNumbers
    recipe: Recipe
    precision: Any
    lhs_dtype: str
    rhs_dtype: str
    ndims: tuple[int, int]
    compute_dtype: str
    out_dtype: str
    telemetry: bool
    transposes: str  # the recipe's fp8_transposes, "auto" resolved (cast_transpose.resolve_transposes)

    def gemm(self, a, b, dn, role, dtype=None, out_dtype=None):
        r = self.recipe
        return gemm(a, b, dn, role=role, compute_dtype=dtype or self.compute_dtype, accum_dtype=r.accum_dtype,
                    native_fp8=r.native_fp8, precision=self.precision, out_dtype=out_dtype,
                    fp8_transposes=self.transposes)


class _Saved(NamedTuple):
    """What the backward pass needs; None where the recipe does not need it."""

    act: Operand | None        # forward-quantized operands (reuse_forward)
    weight: Operand | None
    lhs: jax.Array | None      # high-precision operands (requantization)
    rhs: jax.Array | None      # (also the weight estimator's input)
    act_input: jax.Array | None  # what the activation quantizer saw (after OCC's clamp or fwd_hadamard)
    weight_input: jax.Array | None  # what the weight quantizer saw (for its estimator)
    act_scale: jax.Array | None
    weight_scale: jax.Array | None
    residual: jax.Array | None  # OCC's residual, for the separate compensation's weight gradient
    key: Any
    history: jax.Array | None  # delayed scaling: the history and the forward roles' amaxes
    fwd_amax: dict


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _qdot(cfg, lhs, rhs, key, probe, history):
    return _forward(cfg, lhs, rhs, key, history)[:2]


def _qdot_fwd(cfg, lhs, rhs, key, probe, history):
    y, stats, saved = _forward(cfg, lhs, rhs, key, history)
    return (y, stats), saved


def _history_row(cfg: _Config, history, role: str):
    """The amax history of ``role`` when it is scaled from one, else None."""
    q = getattr(cfg.recipe, role)
    return None if history is None or q is None or q.source != "delayed" else history[ROLES.index(role)]


def _quantize(cfg: _Config, history, amaxes: dict, role: str, x, q, contraction, keys, split=None):
    """``operand.quantize`` of ``x`` by ``q`` for ``role``; a delayed role is scaled from its row
    of ``history`` and records the amax of ``x`` in ``amaxes``."""
    row = _history_row(cfg, history, role)
    op, s = operand.quantize(x, q, contraction, keys[role], cfg.compute_dtype, row, split, row is not None)
    if row is not None:  # from the cast-transpose kernel's own pass when it ran, else a reduction
        amaxes[role] = (scaling.tensor_amax(x, barrier=False) if op.amax is None else op.amax).reshape(())
    return op, s


def _two_layouts(cfg: _Config, x, contraction, batch, q, partner) -> int | None:
    """With ``fp8_transposes="pallas"`` (or ``"auto"`` resolved to it): the split at which ``x``
    (quantized by ``q``, multiplied with an operand quantized by ``partner``) gets both its GEMM
    layouts from one kernel, when two GEMMs use it and they run on FP8 tensor cores; else None."""
    r = cfg.recipe
    if cfg.transposes != "pallas" or q is None or partner is None:
        return None
    names = (native.cast_dtype_for(q.format), native.cast_dtype_for(partner.format))
    if None in names or native.choose(*names, r.native_fp8)[0] != "native_fp8":
        return None
    return cast_transpose.split_of(x.ndim, contraction, batch)


def _shared_grad(cfg: _Config) -> bool:
    """Whether both backward GEMMs take the same quantized output gradient (one quantizer, no
    stochastic rounding, no history of its own): then it is quantized once, in both layouts."""
    r = cfg.recipe
    q = r.dgrad_grad
    return (cfg.transposes == "pallas" and q is not None and q == r.wgrad_grad and q.rounding != "stochastic"
            and q.source != "delayed" and r.dgrad_hadamard is None and r.wgrad_hadamard is None)


def _hadamard(cfg: _Config, field: str, key, a, a_contract, b, b_contract):
    """Both operands of a GEMM through the recipe's ``field`` transform along their last
    contracted axis pair (unchanged when it is None)."""
    h = getattr(cfg.recipe, field)
    if h is None:
        return a, b
    if not a_contract:
        raise ValueError(f"Recipe.{field}: the GEMM contracts no axis; a Hadamard transform needs one")
    k = _hadamard_key(key, field)
    return h.apply(a, a_contract[-1], k), h.apply(b, b_contract[-1], k)


def _hadamard_key(key, field: str):
    return None if key is None else jax.random.fold_in(key, len(ROLES) + list(HADAMARDS).index(field))


def _unhadamard(cfg: _Config, key, grad, contract):
    """A backward result in the forward-transformed domain mapped back by the inverse of
    ``fwd_hadamard`` along the operand's last contracted axis (unchanged without one)."""
    h = cfg.recipe.fwd_hadamard
    return grad if h is None else h.invert(grad, contract[-1], _hadamard_key(key, "fwd_hadamard"))


def _forward(cfg: _Config, lhs, rhs, key, history):
    """(output, forward telemetry or None, what the backward pass needs)."""
    r, ((lc, rc), (lb, rb)) = cfg.recipe, cfg.dn
    keys = _role_keys(key)
    q_act, q_w = r.fwd_act, r.fwd_weight
    x, occ, clamped, residual = lhs, None, None, None
    if q_act is not None and q_act.occ is not None:
        occ, q_act = q_act.occ, q_act.replace(occ=None)
        x, delta = occ_lib.clamp(lhs, occ)
        clamped = delta != 0
        residual = delta.astype(occ.residual_dtype) if occ.compensate else None
    fwd_amax = {}
    reused = r.reuse_forward and residual is None
    x, w = _hadamard(cfg, "fwd_hadamard", key, x, lc, rhs, rc)
    act, act_s = _quantize(cfg, history, fwd_amax, "fwd_act", x, q_act, lc, keys,
                           _two_layouts(cfg, x, lc, lb, q_act, q_w) if reused else None)
    weight, weight_s = _quantize(cfg, history, fwd_amax, "fwd_weight", w, q_w, rc, keys,
                                 _two_layouts(cfg, w, rc, rb, q_w, q_act) if reused else None)
    if r.requantize_from == "forward":  # the backward requantizes the forward's quantized operands
        lhs_b, rhs_b = act.dequantize(), weight.dequantize()
    elif r.fwd_hadamard is not None:  # ... or its transformed ones
        lhs_b, rhs_b = x, w
    else:
        lhs_b, rhs_b = lhs, rhs
    stats = None
    if cfg.telemetry:
        seen = lhs if r.fwd_hadamard is None else x
        stats = telemetry.rows({"fwd_act": _act_stats(seen, x, act, act_s, q_act, lc, clamped, residual),
                                "fwd_weight": _stats(w, weight, weight_s, q_w, rc)})
    separate = residual is not None and r.compensation == "separate"
    if residual is not None and not separate:  # fused: the residual joins the quantized activation
        act = Operand((act.dequantize() + residual.astype(jnp.float32)).astype(occ.residual_dtype))
    y = cfg.gemm(act, weight, cfg.dn, "forward", out_dtype=None if separate else cfg.out_dtype)
    if separate:
        comp = cfg.gemm(Operand(residual), Operand(rhs.astype(occ.residual_dtype)), cfg.dn,
                        "compensation", dtype=occ.residual_dtype)
        y = y.astype(jnp.float32) + comp.astype(jnp.float32)
    act_d = q_act is not None and q_act.estimator.needs_input
    w_d = q_w is not None and q_w.estimator.needs_input
    saved = _Saved(
        act=act if r.reuse_forward else None, weight=weight if r.reuse_forward else None,
        lhs=None if r.reuse_forward else lhs_b, rhs=None if r.reuse_forward else rhs_b,
        act_input=x if act_d else None, weight_input=w if w_d else None, act_scale=act_s if act_d else None, weight_scale=weight_s if w_d else None,
        residual=residual if separate else None, key=key, history=history, fwd_amax=fwd_amax)
    return y.astype(cfg.out_dtype), stats, saved


def _qdot_bwd(cfg: _Config, saved: _Saved, cts):
    g, by_role = cts[0], {}
    keys = _role_keys(saved.key)
    amaxes = dict(saved.fwd_amax)
    shared = None
    if _shared_grad(cfg):  # both layouts of the output gradient at once
        gi = dims.grad_input(cfg.dn, *cfg.ndims)
        (g_c, _), (g_b, _) = gi.dn
        w_q = cfg.recipe.quantizer("dgrad_weight")
        shared = _quantize(cfg, saved.history, amaxes, "dgrad_grad", g, cfg.recipe.dgrad_grad, g_c, keys,
                           _two_layouts(cfg, g, g_c, g_b, cfg.recipe.dgrad_grad, w_q))
    dx = _grad_input(cfg, saved, g, keys, by_role, amaxes, shared)
    dw = _grad_weight(cfg, saved, g, keys, by_role, amaxes, shared)
    probe_ct = telemetry.rows(by_role) if cfg.telemetry else None
    history_ct = None
    if saved.history is not None:
        rows = [update_amax_history(h, amaxes[role]) if role in amaxes else h
                for role, h in zip(ROLES, saved.history)]
        history_ct = jnp.stack(rows)
    return dx.astype(cfg.lhs_dtype), dw.astype(cfg.rhs_dtype), None, probe_ct, history_ct


def _grad_input(cfg: _Config, saved: _Saved, g, keys, by_role, amaxes, shared=None):
    """grad x weight^T, through the activation quantizer's estimator. ``shared``: the output
    gradient already quantized for both backward GEMMs."""
    r, gi, lc = cfg.recipe, dims.grad_input(cfg.dn, *cfg.ndims), cfg.dn[0][0]
    (g_c, w_c), _ = gi.dn
    rhs = saved.rhs
    if r.dgrad_hadamard is not None:
        g, rhs = _hadamard(cfg, "dgrad_hadamard", saved.key, g, g_c, rhs, w_c)
    g1, g1_s = shared or _quantize(cfg, saved.history, amaxes, "dgrad_grad", g, r.dgrad_grad, g_c, keys)
    weight = saved.weight
    if weight is None:
        weight, w_s = _quantize(cfg, saved.history, amaxes, "dgrad_weight", rhs, r.dgrad_weight, w_c, keys)
        if cfg.telemetry:
            by_role["dgrad_weight"] = _stats(rhs, weight, w_s, r.dgrad_weight, w_c)
    if cfg.telemetry:
        by_role["dgrad_grad"] = _stats(g, g1, g1_s, r.dgrad_grad, g_c)
    d = None if r.fwd_act is None else operand.derivative(
        saved.act_input, operand.bind(r.fwd_act.replace(occ=None), lc), saved.act_scale)
    dx = _transpose(cfg.gemm(g1, weight, gi.dn, "grad_input", out_dtype=cfg.lhs_dtype if d is None else None),
                    gi.perm)
    return _unhadamard(cfg, saved.key, dx if d is None else dx.astype(jnp.float32) * d, lc)


def _grad_weight(cfg: _Config, saved: _Saved, g, keys, by_role, amaxes, shared=None):
    """grad x activation (transposed to the weight's layout), through the weight quantizer's
    estimator, plus the separate OCC compensation's weight gradient."""
    r, gw, rc = cfg.recipe, dims.grad_weight(cfg.dn, *cfg.ndims), cfg.dn[0][1]
    (g_c, a_c), _ = gw.dn
    g_in, lhs = g, saved.lhs
    if r.wgrad_hadamard is not None:
        g_in, lhs = _hadamard(cfg, "wgrad_hadamard", saved.key, g, g_c, lhs, a_c)
    g2, g2_s = shared or _quantize(cfg, saved.history, amaxes, "wgrad_grad", g_in, r.wgrad_grad, g_c, keys)
    act = saved.act
    if act is None:
        act, a_s = _quantize(cfg, saved.history, amaxes, "wgrad_act", lhs, r.wgrad_act, a_c, keys)
        if cfg.telemetry:
            by_role["wgrad_act"] = _stats(lhs, act, a_s, r.wgrad_act, a_c)
    if cfg.telemetry:
        by_role["wgrad_grad"] = _stats(g_in, g2, g2_s, r.wgrad_grad, g_c)
    d = None if r.fwd_weight is None else operand.derivative(
        saved.weight_input, operand.bind(r.fwd_weight, rc), saved.weight_scale)
    plain = d is None and saved.residual is None
    dw = _transpose(cfg.gemm(g2, act, gw.dn, "grad_weight", out_dtype=cfg.rhs_dtype if plain else None), gw.perm)
    if d is not None:
        dw = dw.astype(jnp.float32) * d
    dw = _unhadamard(cfg, saved.key, dw, rc)
    if saved.residual is not None:
        rd = saved.residual.dtype
        comp = cfg.gemm(Operand(g.astype(rd)), Operand(saved.residual), gw.dn, "compensation_grad",
                        dtype=rd)
        dw = dw.astype(jnp.float32) + _transpose(comp.astype(jnp.float32), gw.perm)
    return dw


_qdot.defvjp(_qdot_fwd, _qdot_bwd)
# Compiled as one computation also when called eagerly (op-by-op dispatch of the quantizers'
# many small ops is slow); inside an outer jit it is inlined.
_qdot_jit = jax.jit(_qdot, static_argnums=0)


def _stats(x, op: Operand, s, q, contraction):
    if q is None:
        return None
    q = operand.bind(q, contraction)
    return telemetry.operand_stats(x, op.dequantize(), operand.scaled_input(x, q, s), q.format.max)


def _act_stats(lhs, x, act: Operand, s, q, lc, clamped, residual):
    """The forward activation's stats against the unclamped input; with compensation the
    effective operand includes the residual."""
    if q is None:
        return None
    effective = act.dequantize()
    if residual is not None:
        effective = effective + residual.astype(jnp.float32)
    q = operand.bind(q, lc)
    return telemetry.operand_stats(lhs, effective, operand.scaled_input(x, q, s), q.format.max, clamped)


def _role_keys(key) -> dict:
    if key is None:
        return dict.fromkeys(ROLES)
    return {role: jax.random.fold_in(key, i) for i, role in enumerate(ROLES)}


def _transpose(x, perm):
    return x if perm is None else x.transpose(perm)
