"""The cast-transpose experiment: one Pallas kernel writes both FP8 layouts, the same bits as XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmark_transpose import F8, cast_transpose


def test_pallas_cast_transpose_matches_xla_bit_for_bit():
    x = jax.random.normal(jax.random.key(0), (128, 192), jnp.bfloat16) * 40  # some overflow E4M3 (NaN in both paths)
    s = jnp.float32(2.0 ** 3)
    q, qt = cast_transpose(x, s, block=64)
    want = np.asarray((x.astype(jnp.float32) * s).astype(F8)).view(np.uint8)
    np.testing.assert_array_equal(np.asarray(q).view(np.uint8), want)
    np.testing.assert_array_equal(np.asarray(qt).view(np.uint8), want.T)


def test_a_block_that_does_not_divide_the_operand_is_an_error():
    with pytest.raises(ValueError, match="--block 48 must divide"):
        cast_transpose(jnp.zeros((64, 64), jnp.bfloat16), jnp.float32(1.0), block=48)
