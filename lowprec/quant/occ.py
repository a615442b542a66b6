"""Outlier clamping and compensation (OCC; Wang et al. 2025, FP4 training).

Activations are clamped to the (1−α) and α quantiles of their signed values, per tensor or
per token (each row over the last axis): ``Yc = clip(Y, q_{1−α}, q_α)``. The clamped ``Yc``
goes through the low-precision GEMM; the sparse residual ``ΔY = Y − Yc`` (≈ 2(1−α) of the
entries are non-zero) can be multiplied by the weight in a higher precision and added back
(the compensation; the ops layer does that GEMM with the residual from :func:`clamp`).

Quantiles are order statistics (no interpolation), so the bounds are entries of ``Y`` and
clamping twice changes nothing. Which ones (of n sorted values, 0-based):

- ``index="tail"``: ``k`` and ``n - 1 - k`` with ``k = tail_count(alpha, n, ...)``, about
  ``round((1 − α) n)`` values beyond each bound: the clamped fraction is (1 − α) per side.
- ``index="floor"``: ``int((1 − α) n)`` and ``int(α n)`` (Python floats), the indices of the
  FP4 paper's released code (Azure/MS-AMP, ``FP4_QUANTIZER._apply_quantile_clipping``); they
  need not be symmetric, e.g. n = 256, α = 0.99: 2 and 253 (``tail``: 3 and 252), and
  n = 100: 1 and 99, the maximum (no upper clamp).

- ``quantile="exact"`` sorts each group once for both bounds (a full sort: the cost that
  makes exact per-tensor quantiles of a large activation slower than its GEMM).
- ``quantile="approx"`` takes the same order statistics of a fixed strided subsample: at most
  ``TENSOR_SAMPLE`` entries per tensor (the stride is made coprime with the row length, so
  every column is visited and outlier channels cannot alias with the stride) or
  ``TOKEN_SAMPLE`` per row. Error, for data without structure that lines up with the stride:
  the fraction of a group clamped on each side is (1−α) with a standard deviation of
  sqrt(α(1−α)/m) for a sample of m, plus at most 1/(2m) from rounding the sample rank; e.g.
  0.04% at α = 0.99 per tensor (m = 65536) and 0.44% per token (m = 512). The error in value
  is that rank error divided by the data's density at the bound.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

PER = ("tensor", "token")
QUANTILES = ("exact", "approx")
INDICES = ("tail", "floor")
TENSOR_SAMPLE = 1 << 16
TOKEN_SAMPLE = 1 << 9


@dataclasses.dataclass(frozen=True)
class OCC:
    """Outlier clamping settings; a frozen, hashable value (part of a Quantizer or recipe).

    ``alpha`` in (0.5, 1): the upper quantile (the paper trains with 0.99); ``per``:
    ``"tensor"`` or ``"token"`` (one pair of bounds per row over the last axis);
    ``compensate``: whether the residual GEMM is added back (clamp-only when False);
    ``residual_dtype``: the dtype of the residual and its GEMM; ``quantile``: ``"exact"`` or
    ``"approx"`` (a subsample's order statistics; see the module docstring for its error);
    ``index``: ``"tail"`` or ``"floor"``, which order statistics are the bounds (module docstring).
    """

    alpha: float = 0.99
    per: str = "tensor"
    compensate: bool = True
    residual_dtype: str = "bfloat16"
    quantile: str = "exact"
    index: str = "tail"

    def __post_init__(self):
        if not 0.5 < self.alpha < 1:
            raise ValueError(f"OCC alpha must lie in the open interval (0.5, 1); got {self.alpha}")
        for field, allowed in (("per", PER), ("quantile", QUANTILES), ("index", INDICES)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"unknown OCC {field} {getattr(self, field)!r}; known: {', '.join(allowed)}")
        try:
            dtype = jnp.dtype(self.residual_dtype)
        except TypeError:
            dtype = None
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"OCC residual_dtype must be a floating dtype (e.g. bfloat16, float16, "
                             f"float32); got {self.residual_dtype!r}")
        object.__setattr__(self, "residual_dtype", dtype.name)

    def __str__(self) -> str:
        parts = [f"alpha={self.alpha:g}", f"per={self.per}"]
        if self.quantile != "exact":
            parts.append(f"quantile={self.quantile}")
        if self.index != "tail":
            parts.append(f"index={self.index}")
        if not self.compensate:
            parts.append("compensate=False")
        if self.residual_dtype != "bfloat16":
            parts.append(f"residual={self.residual_dtype}")
        return "occ(" + ",".join(parts) + ")"

    def clamp(self, x) -> tuple[jax.Array, jax.Array]:
        """``clamp(x, self)``."""
        return clamp(x, self)


def clamp(x, occ: OCC) -> tuple[jax.Array, jax.Array]:
    """``(xc, residual)``: ``x`` clipped to its quantile bounds (same dtype as ``x``) and
    ``x − xc`` (computed in fp32, returned in ``occ.residual_dtype``).

    Gradients follow ``jnp.clip`` (the bounds are constants): 1 inside for ``xc``, 1 outside
    for the residual, so ``xc + residual`` has the identity gradient.
    """
    x = jnp.asarray(x)
    lo, hi = bounds(jax.lax.stop_gradient(x), occ)
    xc = jnp.clip(x, lo, hi)
    # Zero inside the bounds by construction: XLA may keep a fused producer of a bf16 ``x`` in
    # f32 (excess precision), and ``x - xc`` would then be a dense sub-ulp residual.
    outside = (x < lo) | (x > hi)
    residual = jnp.where(outside, x.astype(jnp.float32) - xc.astype(jnp.float32), 0.0).astype(occ.residual_dtype)
    return xc, residual


def bounds(x, occ: OCC) -> tuple[jax.Array, jax.Array]:
    """The (1−α) and α order statistics: shape ``(1,) * x.ndim`` per tensor, or
    ``x.shape[:-1] + (1,)`` per token; dtype of ``x``."""
    if x.ndim == 0:
        raise ValueError("OCC needs an array of rank >= 1; got a scalar")
    x = _replicated_if_explicit(x)
    if occ.per == "tensor":
        groups, out_shape = x.reshape(1, -1), (1,) * x.ndim
    else:
        groups, out_shape = x.reshape(-1, x.shape[-1]), x.shape[:-1] + (1,)
    v = _subsample(groups, x.shape[-1], occ.per) if occ.quantile == "approx" else groups
    lo, hi = bound_indices(occ, v.shape[-1], groups.shape[-1])
    s = jnp.sort(v, axis=-1)
    return s[:, lo].reshape(out_shape), s[:, hi].reshape(out_shape)


def bound_indices(occ: OCC, n: int, group_size: int) -> tuple[int, int]:
    """The 0-based positions of the lower and upper bound among ``n`` sorted values (a group of
    ``group_size``, or a subsample of it), by ``occ.index``."""
    if occ.index == "floor":
        return int((1 - occ.alpha) * n), int(occ.alpha * n)
    k = tail_count(occ.alpha, n, group_size)
    return k, n - 1 - k


def _replicated_if_explicit(x):
    """``x`` gathered onto every device when it is sharded over an explicit mesh axis: the
    order statistics of a tensor (or of rows split across devices) need all of it, and the
    flattening reshape has no sharding to give its result there."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or not any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
        return x
    if all(s is None for s in sharding.spec):
        return x
    return jax.sharding.reshard(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def tail_count(alpha: float, n: int, group_size: int) -> int:
    """How many of n sorted values (a group of ``group_size``, or a subsample of it) lie beyond
    each bound. Of a group of N values, the r-th most extreme of a uniform sample of n has on
    average r(N+1)/(n+1) − 1 of the group beyond it; r is chosen to make that (1−α)N. For the
    whole group (n = N) this is exactly round((1−α)N), so the clamped fraction is (1−α) per
    side; for a sample the estimate of the group's bound is unbiased up to rank rounding."""
    r = int(((1 - alpha) * group_size + 1) * (n + 1) / (group_size + 1) + 0.5)
    return min(max(r - 1, 0), (n - 1) // 2)


def _subsample(groups, row_len: int, per: str):
    """A strided subsample of each group (a row of ``groups``): deterministic, a static slice."""
    n = groups.shape[-1]
    if per == "token":
        return groups[:, ::-(-n // TOKEN_SAMPLE)]
    stride = -(-n // TENSOR_SAMPLE)
    while math.gcd(stride, row_len) != 1:  # visit every column: no aliasing with channels
        stride += 1
    return groups[:, ::stride]
