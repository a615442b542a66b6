"""lowprec.ops.einsum: the einsum forms used by layers, lowered onto the quantized dot_general."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec.ops import einsum, recipes
from lowprec.ops.einsum import parse

SPECS = {
    "btd,df->btf": ((2, 3, 8), (8, 5)),
    "btd,dnh->btnh": ((2, 3, 8), (8, 2, 4)),
    "btnh,nhd->btd": ((2, 3, 2, 4), (2, 4, 8)),
    "...d,df->...f": ((2, 3, 8), (8, 5)),
    "bqd,bkd->bkq": ((2, 3, 8), (2, 4, 8)),
    "btd,fd->bft": ((2, 3, 8), (5, 8)),
}


@pytest.mark.parametrize("spec", SPECS)
def test_none_recipe_equals_jnp_einsum_forward_and_backward(spec, rand):
    xs, ws = SPECS[spec]
    x, w = rand(0, xs), rand(1, ws)
    g = rand(2, jnp.einsum(spec, x, w).shape)

    def run(fn):
        y, vjp = jax.vjp(fn, x, w)
        return (y,) + vjp(g)

    got = jax.jit(lambda: run(lambda a, b: einsum(spec, a, b, "none")))()
    for a, b in zip(got, run(lambda a, b: jnp.einsum(spec, a, b))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_quantized_einsum_equals_the_quantized_dot_general(rand):
    x, w = rand(0, (2, 3, 8)), rand(1, (8, 2, 4))
    from lowprec.ops import dot_general
    want = dot_general(x, w, (((2,), (0,)), ((), ())), recipes.fp8)
    np.testing.assert_array_equal(einsum("btd,dnh->btnh", x, w, "fp8"), want)


@pytest.mark.parametrize("spec,match", [
    ("ab,bc", "must be 'lhs,rhs->out'"),
    ("ab,bc,cd->ad", "must be 'lhs,rhs->out'"),
    ("ab,b...->a", r"'\.\.\.' is supported in the lhs and output only"),
    ("aab,bc->ac", "must be distinct letters"),
    ("abc,cd->abd", "has 3 letters for a 2-D operand"),
    ("ab,bc->a", "summing 'c' out of one operand is not supported"),
])
def test_bad_specs_say_why(spec, match):
    with pytest.raises(ValueError, match=match):
        parse(spec, 2, 2)
