"""Gradient estimators: what the backward pass of a hard quantizer uses as its derivative.

An estimator multiplies the upstream gradient elementwise by ``derivative(xs, fmt)``, where
``xs`` is the scaled input (``x / scale``, the value the format rounded) and ``fmt`` the
element format. Scales are treated as constants (for DGE they cancel exactly).

Built in: ``ste`` (identity), ``clipped_ste`` (identity inside the format's range, zero where
the input was clipped), ``quest_trust`` (QuEST's mask: zero from ``|xs| = max`` on) and ``dge`` (the FP4 paper's differentiable gradient estimator, on the
grid of any format). A user-defined estimator is any hashable ``fn(xs, fmt) -> derivative``:

    def half_outside(xs, fmt):
        return jnp.where(jnp.abs(xs) <= fmt.max / 2, 1.0, 0.5)

    q = Quantizer("int4", estimator=Estimator("half_outside", half_outside))
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from lowprec.formats import Format
from lowprec.registry import Registry


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A named derivative ``fn(xs, fmt) -> array``; ``fn=None`` is the identity (STE).

    ``fn`` must be a hashable callable (a module-level function or a frozen dataclass), so a
    Quantizer holding the estimator stays a static, hashable value under jit.
    """

    name: str
    fn: Callable | None = None

    @property
    def needs_input(self) -> bool:
        return self.fn is not None

    def derivative(self, xs, fmt: Format):
        if self.fn is None:
            return jnp.ones_like(xs)
        return self.fn(xs, fmt)

    def __str__(self) -> str:
        return self.name


# A scaled input may exceed the range by fp32 rounding alone (amax / (amax / max) can land an
# ulp or two above max); within this relative tolerance it counts as inside, not clipped.
_RANGE_RTOL = 2.0 ** -21


def clipped_ste_derivative(xs, fmt: Format):
    """1 where ``fmt.min <= xs <= fmt.max`` (to within a few fp32 ulps), else 0."""
    xs = xs.astype(jnp.float32)
    lo = fmt.min - _RANGE_RTOL * abs(fmt.min)
    hi = fmt.max + _RANGE_RTOL * abs(fmt.max)
    return ((xs >= lo) & (xs <= hi)).astype(jnp.float32)


def quest_trust_derivative(xs, fmt: Format):
    """QuEST's trust mask as Quartet's MXFP4 kernel stores it: 1 where ``|xs| < fmt.max``
    strictly (an entry scaled exactly onto the largest value counts as clipped), else 0
    (``clip_mask`` of ``mxfp4_forward_kernel``, IST-DASLab/Quartet)."""
    return (jnp.abs(xs.astype(jnp.float32)) < fmt.max).astype(jnp.float32)


DGE_OUTSIDE = ("end", "zero", "msamp")


def dge_interval_mean(k: float = 5.0, cap: float = 3.0) -> float:
    """The mean of the capped f′ over one interval (uniform position): ``1 − t0^(1/k) + cap·t0``
    with ``t0 = (k·cap)^(−k/(k−1))``, where the cap starts to bind (0.594 for k = 5, cap = 3;
    1 without the cap, since ∫₀¹ (1/k) t^(1/k−1) dt = 1). k = 1 (the STE) gives 1."""
    if k == 1 or cap * k <= 1:
        return min(1.0, cap) if k == 1 else cap
    t0 = (k * cap) ** (-k / (k - 1))
    return 1.0 - t0 ** (1.0 / k) + cap * t0


def dge_derivative(xs, fmt: Format, k: float = 5.0, cap: float = 3.0, dtype: str | None = None,
                   outside: str = "end", mean_one: bool = False):
    """The FP4 paper's f′ on the local interval of ``fmt``'s grid around each ``xs``.

    With ``[lo, hi] = fmt.neighbors(xs)``, ``δ = hi − lo`` and ``u = xs − lo``:
    ``f′ = min(cap, (1/k) · |2u/δ − 1|^(1/k − 1))``, so f′ = 1/k at grid points and ``cap``
    at midpoints. Outside the format's range (where the forward pass saturates), ``outside``:
    ``"end"``: 1/k, the value at the end point, the limit of f′ from inside the last interval
    (saturated entries keep a small gradient rather than none); ``"zero"``: 0; ``"msamp"``:
    as the FP4 paper's released kernel (Azure/MS-AMP, ``differentiable_quantize_derivative``):
    below the range the first interval's formula continued, above it 0. ``dtype``: the
    derivative rounded to it (nearest-even; the released kernel writes bfloat16), else fp32.
    ``mean_one``: f′ divided by its interval mean (:func:`dge_interval_mean`), so it averages 1
    over an interval like the STE's (a null test: under Adam a constant factor cancels).
    NaN inputs give NaN.
    """
    xs = xs.astype(jnp.float32)
    lo, hi = fmt.neighbors(xs)
    delta = hi - lo
    on_grid = delta == 0
    t = jnp.abs(2.0 * (xs - lo) / jnp.where(on_grid, 1.0, delta) - 1.0)
    d = jnp.minimum(cap, t ** (1.0 / k - 1.0) / k)  # t = 0 (a midpoint) gives inf, capped
    d = jnp.where(on_grid, 1.0 / k, d)
    if outside != "end":
        d = jnp.where(xs > fmt.max, 0.0, d)
        below = xs < fmt.min
        if outside == "zero":
            d = jnp.where(below, 0.0, d)
        else:
            with jax.ensure_compile_time_eval():  # constants, also under a trace
                first = fmt.values()[:2]  # the first interval's formula, continued below it
            t_out = jnp.abs(2.0 * (xs - first[0]) / (first[1] - first[0]) - 1.0)
            d = jnp.where(below, jnp.minimum(cap, t_out ** (1.0 / k - 1.0) / k), d)
    if mean_one:
        d = d * jnp.float32(1.0 / dge_interval_mean(k, cap))
    if dtype is not None:
        d = d.astype(dtype)
    return d.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _DGE:
    """DGE with fixed settings: a hashable, comparable ``fn`` for an Estimator."""

    k: float
    cap: float
    dtype: str | None = None
    outside: str = "end"
    mean_one: bool = False

    def __call__(self, xs, fmt: Format):
        return dge_derivative(xs, fmt, self.k, self.cap, self.dtype, self.outside, self.mean_one)


def dge(k: float = 5.0, cap: float = 3.0, dtype: str | None = None, outside: str = "end",
        mean_one: bool = False) -> Estimator:
    """The differentiable gradient estimator (Wang et al. 2025) with sharpness ``k``, ``cap``,
    the derivative's ``dtype`` (None: fp32) and its value ``outside`` the range (see
    :func:`dge_derivative`).

    Named ``"dge"`` for the paper's k = 5, cap = 3 and e.g. ``"dge(k=3)"`` or
    ``"dge(dtype=bfloat16,outside=msamp)"`` otherwise; equal arguments give equal (and equally
    hashed) estimators. k = 1 (with cap >= 1) is the STE. ``mean_one=True`` (``"dge(mean_one=true)"``)
    divides f′ by its interval mean (see :func:`dge_derivative`).
    """
    if not k >= 1:
        raise ValueError(f"dge k must be >= 1 (k = 1 is the STE); got {k}")
    if not cap > 0:
        raise ValueError(f"dge cap must be positive; got {cap}")
    if outside not in DGE_OUTSIDE:
        raise ValueError(f"unknown dge outside {outside!r}; known: {', '.join(DGE_OUTSIDE)}")
    if dtype is not None:
        try:
            dtype = jnp.dtype(dtype).name
        except TypeError:
            dtype = None
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError("dge dtype must be None or a floating dtype (e.g. bfloat16, float16)")
    args = [f"{n}={v:g}" for n, v, default in (("k", k, 5.0), ("cap", cap, 3.0)) if v != default]
    args += [f"{n}={v}" for n, v, default in (("dtype", dtype, None), ("outside", outside, "end")) if v != default]
    args += ["mean_one=true"] if mean_one else []
    name = "dge" + (f"({','.join(args)})" if args else "")
    return Estimator(name, _DGE(k, cap, dtype, outside, bool(mean_one)))


STE = Estimator("ste")
CLIPPED_STE = Estimator("clipped_ste", clipped_ste_derivative)
DGE = dge()
QUEST_TRUST = Estimator("quest_trust", quest_trust_derivative)
def _check(name: str, est: Estimator) -> Estimator:
    if not isinstance(est, Estimator):
        raise TypeError(f"register_estimator needs an Estimator; got {type(est).__name__}")
    return est


def _dge_spec(k: float = 5.0, cap: float = 3.0, dtype: str | None = None, outside: str = "end",
              mean_one: bool = False) -> Estimator:
    """``dge(k=3, cap=2, dtype=bfloat16, outside=msamp, mean_one=true)`` from a spec string."""
    for field, value in (("k", k), ("cap", cap)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"estimator dge: {field} must be a number; got {value!r}")
    if not isinstance(mean_one, bool):
        raise ValueError(f"estimator dge: mean_one must be true or false; got {mean_one!r}")
    return dge(float(k), float(cap), dtype, outside, mean_one)


ESTIMATORS = Registry("estimator", check=_check, words=True)
for _est in (STE, CLIPPED_STE, QUEST_TRUST):
    ESTIMATORS.register(_est.name, _est)
ESTIMATORS.register("dge", DGE, factory=_dge_spec)


def register_estimator(est: Estimator) -> Estimator:
    """Makes ``est`` selectable by name (``Quantizer(estimator="name")``); replaces one of that name."""
    if not isinstance(est, Estimator):
        raise TypeError(f"register_estimator needs an Estimator; got {type(est).__name__}")
    return ESTIMATORS.register(est.name, est, overwrite=True)


def estimator_names() -> list[str]:
    """Every registered estimator name, sorted (``dge(...)`` with arguments parses but is not listed)."""
    return ESTIMATORS.names()


def get_estimator(spec: str | Estimator | Callable) -> Estimator:
    """An estimator by name (``"dge(k=3,cap=2)"`` parses too), object, or bare ``fn(xs, fmt)``."""
    if isinstance(spec, Estimator):
        return spec
    if callable(spec):
        return Estimator(getattr(spec, "__name__", type(spec).__name__), spec)
    return ESTIMATORS.get(spec)
