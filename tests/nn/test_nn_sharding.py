"""QuantDense on a mesh of 8 CPU devices gives what it gives on one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from lowprec.nn import QuantDense

LOGICAL_TO_MESH = {"embed": None, "mlp": "tensor"}


def _mesh_sharding(mesh, logical):
    return NamedSharding(mesh, PartitionSpec(*(LOGICAL_TO_MESH.get(name) for name in logical)))


@pytest.mark.parametrize("recipe,axis_type", [("none", AxisType.Auto), ("fp8", AxisType.Auto),
                                              ("fp4_paper", AxisType.Auto), ("fp8", AxisType.Explicit),
                                              ("fp4_paper", AxisType.Explicit)])
def test_sharded_output_equals_single_device_output(recipe, axis_type):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 CPU devices"
    mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(axis_type, axis_type))
    layer = QuantDense(64, 32, recipe=recipe, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_t(3, (4, 16, 64)), jnp.float32)
    graphdef, state = nnx.split(layer)

    @jax.jit
    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    want = forward(state, x)
    specs = nnx.get_partition_spec(state)
    shardings = jax.tree.map(lambda spec: _mesh_sharding(mesh, spec), specs,
                             is_leaf=lambda s: isinstance(s, PartitionSpec))
    sharded_state = jax.device_put(state, shardings)
    sharded_x = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data", None, None)))
    got = forward(sharded_state, sharded_x)
    assert len(got.sharding.device_set) == 8
    assert tuple(sharded_state["kernel"].get_value().sharding.spec) == (None, "tensor")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
