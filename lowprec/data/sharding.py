"""Global batches on a device mesh, each process computing only the rows its devices hold."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXES = ("data", "fsdp")


def batch_sharding(mesh: Mesh, data_axes: Sequence[str] = DATA_AXES) -> NamedSharding:
    """Leading (batch) dimension split over ``data_axes``; the rest replicated."""
    unknown = [a for a in data_axes if a not in mesh.axis_names]
    if unknown:
        raise ValueError(f"data_axes {tuple(unknown)} are not axes of the mesh; "
                         f"mesh axes: {', '.join(mesh.axis_names)}")
    return NamedSharding(mesh, PartitionSpec(tuple(data_axes)))


def global_batch(rows: Callable[[int, int], np.ndarray], shape: tuple[int, ...], mesh: Mesh,
                 data_axes: Sequence[str] = DATA_AXES) -> jax.Array:
    """A ``jax.Array`` of ``shape`` sharded by ``batch_sharding``.

    ``rows(start, stop)`` returns rows ``start:stop`` of the global batch; it is called only
    for the row blocks of this process's devices (once per block), so in a multi-process run
    every process reads just its own share.
    """
    sharding = batch_sharding(mesh, data_axes)
    shards = math.prod(mesh.shape[a] for a in data_axes)
    if shape[0] % shards:
        raise ValueError(f"batch_size {shape[0]} is not divisible by the {shards} data-parallel "
                         f"shards of mesh axes {tuple(data_axes)}")
    blocks: dict[tuple[int, int], np.ndarray] = {}

    def shard(index: tuple[slice, ...]) -> np.ndarray:
        start, stop, _ = index[0].indices(shape[0])
        if (start, stop) not in blocks:
            blocks[start, stop] = rows(start, stop)
        return blocks[start, stop][(slice(None),) + tuple(index[1:])]

    return jax.make_array_from_callback(shape, sharding, shard)
