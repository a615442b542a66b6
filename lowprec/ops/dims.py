"""Dimension numbers of a dot_general and of the two GEMMs of its backward pass.

A dot_general's output holds its batch dims, then the lhs's free dims, then the rhs's free dims.
The grad-input GEMM contracts the output gradient with the rhs over the rhs's free dims; the
grad-weight GEMM contracts it with the lhs over the lhs's free dims. Each result comes out in
(batch, free, contracted) order and is transposed back to its operand's layout.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DimensionNumbers = tuple[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], tuple[int, ...]]]


class Gemm(NamedTuple):
    """One GEMM: its dimension numbers and the transpose that brings its result to a layout."""

    dn: DimensionNumbers
    perm: tuple[int, ...] | None  # None: the result is already in place


def normalize(dimension_numbers, lhs_ndim: int, rhs_ndim: int) -> DimensionNumbers:
    """Tuples of non-negative ints; checks that the dims are in range and not repeated."""
    try:
        (lc, rc), (lb, rb) = dimension_numbers
    except (TypeError, ValueError):
        raise ValueError("dimension_numbers must be ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch)); "
                         f"got {dimension_numbers!r}") from None
    lc, lb = _axes("lhs", lc, lhs_ndim), _axes("lhs", lb, lhs_ndim)
    rc, rb = _axes("rhs", rc, rhs_ndim), _axes("rhs", rb, rhs_ndim)
    if len(lc) != len(rc) or len(lb) != len(rb):
        raise ValueError(f"lhs and rhs need as many contracting and batch dims; got {dimension_numbers!r}")
    for side, dims in (("lhs", lc + lb), ("rhs", rc + rb)):
        if len(set(dims)) != len(dims):
            raise ValueError(f"{side} dims repeat in dimension_numbers {dimension_numbers!r}")
    return (lc, rc), (lb, rb)


def free(ndim: int, contract, batch) -> tuple[int, ...]:
    """The dims of an operand that are neither contracted nor batch, in order."""
    return tuple(d for d in range(ndim) if d not in contract and d not in batch)


def grad_input(dn: DimensionNumbers, lhs_ndim: int, rhs_ndim: int) -> Gemm:
    """grad x rhs -> d lhs."""
    (lc, rc), (lb, rb) = dn
    lf, rf = free(lhs_ndim, lc, lb), free(rhs_ndim, rc, rb)
    nb = len(lb)
    g_contract = tuple(nb + len(lf) + i for i in range(len(rf)))
    gemm_dn = ((g_contract, rf), (tuple(range(nb)), rb))
    # the rhs's contracted dims come out in the rhs's order; each stands for its lhs partner
    result_axes = list(lb) + list(lf) + [lc[rc.index(r)] for r in sorted(rc)]
    return Gemm(gemm_dn, _perm(result_axes))


def grad_weight(dn: DimensionNumbers, lhs_ndim: int, rhs_ndim: int) -> Gemm:
    """grad x lhs -> d rhs."""
    (lc, rc), (lb, rb) = dn
    lf, rf = free(lhs_ndim, lc, lb), free(rhs_ndim, rc, rb)
    nb = len(lb)
    g_contract = tuple(nb + i for i in range(len(lf)))
    gemm_dn = ((g_contract, lf), (tuple(range(nb)), lb))
    result_axes = list(rb) + list(rf) + [rc[lc.index(a)] for a in sorted(lc)]
    return Gemm(gemm_dn, _perm(result_axes))


def scale_to_output(scale, contract, batch, side: str, n_other_free: int):
    """An operand's scale (1 along ``contract``) laid out for the GEMM's output:
    (batch, lhs free, rhs free), with size-1 dims for the other operand's free dims."""
    ndim = scale.ndim
    fr = free(ndim, contract, batch)
    s = scale.transpose(tuple(batch) + fr + tuple(contract))
    kept = s.shape[:len(batch) + len(fr)]
    ones = (1,) * n_other_free
    if side == "lhs":
        shape = kept + ones
    else:
        shape = kept[:len(batch)] + ones + kept[len(batch):]
    return s.reshape(shape)


def _perm(result_axes) -> tuple[int, ...] | None:
    perm = tuple(int(i) for i in np.argsort(result_axes))
    return None if perm == tuple(range(len(perm))) else perm


def _axes(side: str, dims, ndim: int) -> tuple[int, ...]:
    out = []
    for d in dims:
        d = int(d)
        if not -ndim <= d < ndim:
            raise ValueError(f"{side} dim {d} is out of range for a {ndim}-D operand")
        out.append(d % ndim)
    return tuple(out)
