"""The Pallas kernels (FP8 cast-transpose, MX block kernel) run per shard on an 8-device CPU mesh
(in the Pallas interpreter) and give the unsharded kernel's bits, under data-parallel, FSDP and
tensor-parallel shardings, on meshes of Auto (custom_partitioning) and Explicit (shard_map) axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import lowprec as lp
from lowprec.ops import cast_transpose as ct
from lowprec.quant import block_kernel

AXES = ("data", "fsdp", "tensor")


def _mesh(axis_type):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 CPU devices"
    return jax.make_mesh((2, 2, 2), AXES, axis_types=(axis_type,) * 3)


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint8) if a.dtype.itemsize == 1 else a.view(np.uint32)


# (shape, split, spec): activations split over the batch (data parallel), a kernel (in, out)
# split over fsdp on its embedding axis, one split over tensor on its hidden axis, and all three
CT_CASES = [((4, 64, 128), 2, P(("data", "fsdp"))), ((128, 256), 1, P("fsdp", None)),
            ((128, 256), 1, P(None, "tensor")), ((4, 128, 128), 2, P("data", "fsdp", "tensor"))]


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
@pytest.mark.parametrize("shape,split,spec", CT_CASES)
def test_cast_transpose_per_shard_equals_unsharded(axis_type, shape, split, spec):
    x = jnp.asarray(np.random.default_rng(0).standard_t(3, shape).astype(np.float32) * 50, jnp.bfloat16)
    inv = jnp.float32(2.0 ** -3)

    def f(x, inv):
        return ct.cast_transpose(x, inv, jnp.float8_e4m3fn, 448.0, split, amax=True)

    want = ct._kernel_2d(x, inv, jnp.dtype(jnp.float8_e4m3fn), 448.0, split, ct.BLOCK, True, True)
    mesh = _mesh(axis_type)
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, spec))
        jf = jax.jit(f)
        got = jf(xs, inv)
        hlo = jf.lower(xs, inv).compile().as_text()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(_bits(g), _bits(w))
    assert tuple(got[0].sharding.spec)[:len(spec)] == tuple(spec)  # the FP8 layout keeps the operand's sharding
    assert float(got[2]) == float(jnp.max(jnp.abs(x.astype(jnp.float32))))  # the global amax on every shard
    if spec != P("data", "fsdp", "tensor"):  # (there the 2-D view of the transposed layout regroups shards)
        assert "all-gather" not in hlo, "the operand was gathered: the kernel did not run per shard"


# (shape, spec, expect the last axis kept split)
BK_CASES = [((16, 64), P(("data", "fsdp")), True), ((16, 64), P(None, "tensor"), True),
            ((8, 8, 128), P("data", "fsdp", "tensor"), True), ((64, 64), P(None, ("data", "fsdp", "tensor")), False)]


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
@pytest.mark.parametrize("shape,spec,last_split", BK_CASES)
def test_block_kernel_per_shard_equals_unsharded(axis_type, shape, spec, last_split):
    q = lp.quant.presets.MXFP4
    x = jnp.asarray(np.random.default_rng(1).standard_t(3, shape).astype(np.float32))
    want = block_kernel._one(q, x, True)
    np.testing.assert_array_equal(_bits(want), _bits(jax.jit(q.replace(kernel="xla"))(x)))
    mesh = _mesh(axis_type)
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, spec))
        jf = jax.jit(lambda x: block_kernel.block_fake_quant(q, x, interpret=True))
        got = jf(xs)
        hlo = jf.lower(xs).compile().as_text()
    np.testing.assert_array_equal(_bits(got), _bits(want))
    # a last axis cut inside a block of 32 (64 / 8 = 8 columns a shard) is gathered along it first
    assert ("all-gather" not in hlo) == last_split
