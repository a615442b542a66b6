"""Gradient estimators: what the backward pass of a hard quantizer uses as its derivative.

An estimator multiplies the upstream gradient elementwise by ``derivative(xs, fmt)``, where
``xs`` is the scaled input (``x / scale``, the value the format rounded) and ``fmt`` the
element format. Scales are treated as constants (for DGE they cancel exactly).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from lowprec.formats import Format


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A named derivative ``fn(xs, fmt) -> array``; ``fn=None`` is the identity (STE).

    ``fn`` must be a hashable callable (a module-level function), so a Quantizer holding the
    estimator stays a static, hashable value under jit.
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


STE = Estimator("ste")
_ESTIMATORS: dict[str, Estimator] = {"ste": STE}


def register_estimator(est: Estimator) -> Estimator:
    """Makes ``est`` selectable by name (``Quantizer(estimator="name")``)."""
    if not isinstance(est, Estimator):
        raise TypeError(f"register_estimator needs an Estimator; got {type(est).__name__}")
    _ESTIMATORS[est.name] = est
    return est


def get_estimator(spec: str | Estimator) -> Estimator:
    """An estimator by name or object."""
    if isinstance(spec, Estimator):
        return spec
    if spec not in _ESTIMATORS:
        raise ValueError(f"unknown estimator {spec!r}; known: {', '.join(sorted(_ESTIMATORS))}")
    return _ESTIMATORS[spec]
