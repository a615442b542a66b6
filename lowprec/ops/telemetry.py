"""Numerics telemetry of quantized GEMM operands, computed inside jit.

One row per role (``recipe.ROLES``), one column per statistic (``STATS``):
- ``amax``: largest finite magnitude of the operand before quantization;
- ``saturated``: fraction of elements whose scaled magnitude exceeded the format's max;
- ``clamped``: fraction clamped by OCC (forward activation only);
- ``flushed``: fraction of non-zero elements that became zero;
- ``sqnr_db``: 10 log10(sum x^2 / sum (x - q)^2) of what the GEMM multiplies (q) vs x;
- ``max_over_std``: amax / standard deviation of x (how far the largest outlier sits);
- ``kurtosis``: E[(x - mean)^4] / var^2 of x (3 for a Gaussian; heavy tails are larger);
- ``mse``: mean (x - q)^2; ``cosine``: cosine similarity of q and x (the FP4 paper's Table 1).
Rows of roles that are not quantized (or reuse a forward operand) are zero. All values are
finite so that gradient checks (loss scaling, ``apply_if_finite``) never trip on them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lowprec.ops.recipe import ROLES

STATS = ("amax", "saturated", "clamped", "flushed", "sqnr_db", "max_over_std", "kurtosis", "mse", "cosine")
_TINY = float(jnp.finfo(jnp.float32).tiny)


def probe() -> jax.Array:
    """A zero array whose gradient, through ``dot_general(..., probe=...)``, carries the
    statistics of the backward roles."""
    return jnp.zeros((len(ROLES), len(STATS)), jnp.float32)


def operand_stats(x, effective, scaled, fmt_max: float, clamped=None) -> jax.Array:
    """The ``STATS`` of one operand: input ``x``, what the GEMM multiplies (``effective``), the
    scaled input the format rounded (``scaled``), and OCC's clamped mask (or None)."""
    x = x.astype(jnp.float32)
    effective = effective.astype(jnp.float32)
    finite = jnp.isfinite(x)
    amax = jnp.max(jnp.where(finite, jnp.abs(x), 0.0))
    saturated = jnp.mean((jnp.abs(scaled) > fmt_max) & finite)
    clamped_frac = jnp.zeros((), jnp.float32) if clamped is None else jnp.mean(clamped)
    flushed = jnp.mean((x != 0) & (effective == 0))
    signal = jnp.sum(jnp.where(finite, x * x, 0.0))
    noise = jnp.sum(jnp.where(finite, (x - effective) ** 2, 0.0))
    sqnr = 10.0 * (jnp.log10(signal + _TINY) - jnp.log10(noise + _TINY))
    n = jnp.maximum(jnp.sum(finite), 1).astype(jnp.float32)
    unit = jnp.where(finite, x, 0.0) / jnp.where(amax > 0, amax, 1.0)  # in [-1, 1]: squares cannot flush
    centered = jnp.where(finite, unit - jnp.sum(unit) / n, 0.0)
    std = jnp.sqrt(jnp.sum(centered ** 2) / n)
    z = centered / jnp.where(std > 0, std, 1.0)
    kurtosis = jnp.sum(z ** 4) / n
    max_over_std = jnp.where(std > 0, 1.0 / jnp.where(std > 0, std, 1.0), 0.0)  # amax / std
    mse = noise / n
    dot = jnp.sum(jnp.where(finite, x * effective, 0.0))
    q_norm = jnp.sqrt(jnp.sum(jnp.where(finite, effective * effective, 0.0)))
    cosine = dot / (jnp.sqrt(signal) * q_norm + _TINY)
    return jnp.stack([amax, saturated.astype(jnp.float32), clamped_frac.astype(jnp.float32),
                      flushed.astype(jnp.float32), sqnr, max_over_std, kurtosis, mse, cosine])


def rows(by_role: dict) -> jax.Array:
    """A (len(ROLES), len(STATS)) array from {role: stats row or None}; missing roles are zero."""
    zero = jnp.zeros((len(STATS),), jnp.float32)
    return jnp.stack([zero if by_role.get(role) is None else by_role[role] for role in ROLES])


def as_dict(stats) -> dict[str, dict[str, float]]:
    """{role: {stat: value}} of a stats array (for logs and reports; outside jit)."""
    stats = jax.device_get(stats)
    return {role: {name: float(stats[i, j]) for j, name in enumerate(STATS)} for i, role in enumerate(ROLES)}
