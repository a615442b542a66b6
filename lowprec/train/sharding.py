"""The device mesh and the rules that map logical axis names onto it."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Batch splits over data and fsdp; parameters shard their
# embedding dimension over fsdp (ZeRO-3 style) and their hidden/head/vocab dimension over tensor.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("length", None),
    ("head_dim", None),
)


def mesh_shape(sizes: dict, n_devices: int) -> tuple[int, ...]:
    """Sizes for ``MESH_AXES`` from a dict where one entry may be -1 (= the rest)."""
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; known: {', '.join(MESH_AXES)}")
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1; got {dict(zip(MESH_AXES, shape))}")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh sizes must be positive or -1; got {dict(zip(MESH_AXES, shape))}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n_devices % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} does not divide {n_devices} devices")
        shape[shape.index(-1)] = n_devices // known
    if math.prod(shape) != n_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} has {math.prod(shape)} devices; "
                         f"there are {n_devices} (use -1 for one axis to take the rest)")
    return tuple(shape)


def make_mesh(sizes: dict, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(sizes, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_to_mesh(spec, rules=DEFAULT_RULES) -> PartitionSpec:
    """A PartitionSpec of logical names -> one of mesh axes (unknown names replicate)."""
    table = dict(rules)
    used, out = set(), []
    for name in spec:
        axes = table.get(name) if name is not None else None
        axes = tuple(a for a in ((axes,) if isinstance(axes, str) else (axes or ())) if a not in used)
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*out)


def named_sharding(spec, shape, mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """The NamedSharding of an array of ``shape`` whose axes carry logical names ``spec``;
    mesh axes that do not divide their dimension are dropped (tiny models still shard)."""
    pspec = logical_to_mesh(spec, rules) if spec is not None else PartitionSpec()
    fixed = []
    for dim, axes in zip(shape, tuple(pspec) + (None,) * (len(shape) - len(pspec))):
        names = (axes,) if isinstance(axes, str) else (axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        fixed.append(axes if names and dim % size == 0 else None)
    return NamedSharding(mesh, PartitionSpec(*fixed))


def onto_mesh(tree, mesh: Mesh):
    """Leaves not yet sharded on ``mesh`` (scalars, optimizer counters) replicated onto it."""
    def put(x):
        if isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh:
            return x
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
    return jax.tree.map(put, tree)
