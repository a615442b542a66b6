"""FP8 and FP4 recipes on an 8-device CPU mesh (FSDP, tensor parallel, both) against one device:
per-tensor scales (amax, OCC quantile) are reduced over the whole tensor, per-channel / per-token /
block scales stay local, so the quantized operands are bit-identical; a tiny two-layer step's loss
and gradients equal the unsharded step's up to float reduction order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lowprec.nn import QuantDense
from lowprec.ops import operand, recipes

RECIPES = ["fp8", "fp8_rowwise", "mxfp8", "nvfp4", "fp4_paper"]
# mesh shape (data, fsdp, tensor); specs of x (batch, embed), kernel 1 (embed, mlp), kernel 2 (mlp, embed)
MESHES = {
    "fsdp": ((1, 8, 1), P("fsdp", None), P("fsdp", None), P(None, "fsdp")),
    "tensor": ((1, 1, 8), P(None, None), P(None, "tensor"), P("tensor", None)),
    "fsdp+tensor": ((2, 2, 2), P(("data", "fsdp"), None), P("fsdp", "tensor"), P("tensor", "fsdp")),
}


class _MLP(nnx.Module):
    def __init__(self, recipe):
        self.up = QuantDense(64, 256, recipe=recipe, rngs=nnx.Rngs(0))
        self.down = QuantDense(256, 64, recipe=recipe, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.down(jax.nn.relu(self.up(x)))


def _data():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.standard_t(3, (32, 64)).astype(np.float32)),
            jnp.asarray(rng.standard_normal((32, 64)).astype(np.float32)))


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("mesh_name", ["fsdp+tensor"])  # (each of the others alone: ~25 s a recipe on CPU)
@pytest.mark.parametrize("name", RECIPES)
def test_sharded_step_equals_unsharded(name, mesh_name):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 CPU devices"
    shape, xs, k1, k2 = MESHES[mesh_name]
    mesh = jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    graphdef, state = nnx.split(_MLP(name))
    x, t = _data()

    @jax.jit
    def step(state, x, t):
        def loss(state):
            return jnp.mean((nnx.merge(graphdef, state)(x) - t) ** 2)
        return jax.value_and_grad(loss)(state)

    want_loss, want_grads = step(state, x, t)
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
    sstate = jax.tree.map(lambda a: a, state)
    sstate["up"]["kernel"].set_value(put(state["up"]["kernel"].get_value(), k1))
    sstate["down"]["kernel"].set_value(put(state["down"]["kernel"].get_value(), k2))
    sstate = jax.tree.map(lambda a: a if isinstance(a.sharding, NamedSharding) and a.sharding.mesh == mesh
                          else put(a, P()), sstate)
    got_loss, got_grads = step(sstate, put(x, xs), put(t, xs))
    assert len(got_loss.sharding.device_set) == 8
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-6)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(w))))

    # the quantized operands themselves: activations (tokens, embed) and weights (embed, mlp)
    r = recipes.get(name)
    for q, a, spec, contraction in [(r.fwd_act, x, xs, (1,)), (r.fwd_weight, state["up"]["kernel"].get_value(), k1, (0,)),
                                    (r.dgrad_weight, state["down"]["kernel"].get_value(), k2, (1,))]:
        if q is None:
            continue
        fq = jax.jit(lambda a, q=operand.bind(q, contraction): q(a, key=jax.random.key(0)))
        np.testing.assert_array_equal(_bits(fq(put(a, spec))), _bits(fq(a)), err_msg=f"{name} {q}")
