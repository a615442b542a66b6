"""Test data from numpy's generator: jax.random compiles a program per shape, which is slow on CPU."""

import jax.numpy as jnp
import numpy as np
import pytest


def draw(seed, shape, dtype=jnp.float32, df=None):
    """Standard normal (or Student-t with ``df`` degrees of freedom) samples as a jax array."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) if df is None else rng.standard_t(df, shape)
    return jnp.asarray(x.astype(np.float32), dtype)


@pytest.fixture
def rand():
    return draw
