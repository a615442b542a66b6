"""Quantized two-operand einsum, lowered onto the quantized ``dot_general``."""

from __future__ import annotations

import functools
import string

from lowprec.ops import dims
from lowprec.ops.dot import dot_general
from lowprec.ops.recipe import Recipe


def einsum(spec: str, lhs, rhs, recipe: Recipe | str = "none", key=None, *, precision=None,
           preferred_element_type=None, probe=None, amax_history=None, execution=None):
    """``jnp.einsum(spec, lhs, rhs)`` with ``recipe``'s quantized GEMMs (lhs: activation,
    rhs: weight). ``spec`` names its output (``"btd,dnh->btnh"``); ``...`` may stand for
    leading dims of the lhs and the output. ``execution``: as in ``dot_general``. Returns what
    ``dot_general`` returns."""
    dn, perm = parse(spec.replace(" ", ""), lhs.ndim, rhs.ndim)
    out = dot_general(lhs, rhs, dn, recipe, key, precision=precision,
                      preferred_element_type=preferred_element_type, probe=probe, amax_history=amax_history,
                      execution=execution)
    y = out if probe is None else out[0]
    y = y if perm is None else y.transpose(perm)
    return y if probe is None else (y, out[1])


@functools.lru_cache(maxsize=256)
def parse(spec: str, lhs_ndim: int, rhs_ndim: int) -> tuple[dims.DimensionNumbers, tuple[int, ...] | None]:
    """(dimension numbers, permutation from dot_general's output to the spec's output)."""
    if spec.count("->") != 1 or spec.split("->")[0].count(",") != 1:
        raise ValueError(f"einsum spec must be 'lhs,rhs->out' with two operands; got {spec!r}")
    ins, out = spec.split("->")
    a, b = ins.split(",")
    if "..." in b:
        raise ValueError(f"einsum spec {spec!r}: '...' is supported in the lhs and output only")
    if "..." in a:
        free = [c for c in string.ascii_letters if c not in spec][:lhs_ndim - len(a) + 3]
        a, out = a.replace("...", "".join(free)), out.replace("...", "".join(free))
    for name, term, ndim in (("lhs", a, lhs_ndim), ("rhs", b, rhs_ndim), ("output", out, None)):
        if len(set(term)) != len(term) or (term and not term.isalpha()):
            raise ValueError(f"einsum spec {spec!r}: {name} {term!r} must be distinct letters")
        if ndim is not None and len(term) != ndim:
            raise ValueError(f"einsum spec {spec!r}: {name} {term!r} has {len(term)} letters for a {ndim}-D operand")
    for c in a + b:
        if c not in out and not (c in a and c in b):
            raise ValueError(f"einsum spec {spec!r}: summing '{c}' out of one operand is not supported")
    if any(c not in a + b for c in out):
        raise ValueError(f"einsum spec {spec!r}: output letters must come from the operands")
    contract = [c for c in a if c in b and c not in out]
    batch = [c for c in a if c in b and c in out]
    dn = ((tuple(a.index(c) for c in contract), tuple(b.index(c) for c in contract)),
          (tuple(a.index(c) for c in batch), tuple(b.index(c) for c in batch)))
    produced = batch + [c for c in a if c not in b] + [c for c in b if c not in a]
    perm = tuple(produced.index(c) for c in out)
    return dn, None if perm == tuple(range(len(perm))) else perm
