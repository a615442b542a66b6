"""Batches as global jax.Arrays on a mesh of the 8 fake CPU devices equal the unsharded ones."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from lowprec.data import Batches, EvalBatches, batch_sharding, global_batch, load


def _mesh(shape, names):
    return Mesh(np.asarray(jax.devices()[:8]).reshape(shape), names)


@pytest.fixture(scope="module")
def splits():
    return load("synthetic", num_tokens=40_000, seed=1).split(0.05)


@pytest.mark.parametrize("shape,names,data_axes", [
    ((2, 4), ("data", "fsdp"), ("data", "fsdp")),
    ((2, 2, 2), ("data", "fsdp", "tensor"), ("data", "fsdp")),  # replicated over tensor
    ((8,), ("data",), ("data",)),
])
def test_global_batch_equals_unsharded(splits, shape, names, data_axes):
    train, _ = splits
    mesh = _mesh(shape, names)
    b = Batches(train, seq_len=24, batch_size=16, seed=7)
    arr = b.global_batch(3, mesh, data_axes)
    assert arr.shape == (16, 25) and arr.dtype == np.int32
    assert arr.sharding == batch_sharding(mesh, data_axes)
    np.testing.assert_array_equal(np.asarray(arr), b.batch(3))
    n_shards = int(np.prod([mesh.shape[a] for a in data_axes]))
    for shard in arr.addressable_shards:
        assert shard.data.shape == (16 // n_shards, 25)
        np.testing.assert_array_equal(np.asarray(shard.data), b.batch(3)[shard.index])


def test_iterator_on_a_mesh_yields_sharded_arrays_and_resumes(splits):
    train, _ = splits
    mesh = _mesh((2, 4), ("data", "fsdp"))
    plain = Batches(train, seq_len=8, batch_size=8, seed=0)
    sharded = Batches(train, seq_len=8, batch_size=8, seed=0, mesh=mesh)
    next(sharded)
    resumed = Batches(train, seq_len=8, batch_size=8, seed=0, mesh=mesh)
    resumed.restore(sharded.state())
    x = next(resumed)
    assert isinstance(x, jax.Array) and len(x.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(x), plain.batch(1))


def test_eval_global_batch(splits):
    _, val = splits
    mesh = _mesh((4, 2), ("data", "fsdp"))
    e = EvalBatches(val, seq_len=16, batch_size=8)
    tokens, valid = e.global_batch(len(e) - 1, mesh)
    want_tokens, want_valid = e.batch(len(e) - 1)
    np.testing.assert_array_equal(np.asarray(tokens), want_tokens)
    np.testing.assert_array_equal(np.asarray(valid), want_valid)


def test_each_row_block_is_computed_once_per_call():
    mesh = _mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    calls = []

    def rows(a, b):
        calls.append((a, b))
        return np.arange(a, b, dtype=np.int32)[:, None] * np.ones((1, 3), np.int32)

    arr = global_batch(rows, (8, 3), mesh)
    assert sorted(calls) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    np.testing.assert_array_equal(np.asarray(arr)[:, 0], np.arange(8))


def test_sharding_errors_name_the_problem(splits):
    train, _ = splits
    mesh = _mesh((2, 4), ("data", "fsdp"))
    b = Batches(train, seq_len=8, batch_size=6, seed=0)
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by the 8 data-parallel"):
        b.global_batch(0, mesh)
    with pytest.raises(ValueError, match=r"data_axes \('replica',\) are not axes of the mesh"):
        b.global_batch(0, mesh, ("replica",))
