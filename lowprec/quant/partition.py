"""Pallas kernels partitioned across a mesh: each shard runs the kernel on its own block of the
operand, in the sharding XLA's SPMD partitioner gave the operand.

A ``pallas_call`` is opaque to XLA's partitioner: under a jit over sharded operands it would
gather each operand onto every device and run the whole kernel there. ``per_shard`` wraps a
kernel in ``jax.experimental.custom_partitioning``: when the partitioner reaches it, it tells the
wrapper the operands' shardings; the wrapper says which of them the kernel can take as they are
(``arg_specs``: e.g. a block kernel cannot take its block axis split off a block boundary, nor
the cast-transpose kernel a split inside its 64x64 tiles) and returns the per-shard program:
the kernel on the local block, exactly the body a ``shard_map`` over those specs would run.
Collectives in that body name the mesh's axes (``axes_of``): the cast-transpose kernel's amax is
a ``pmax`` over every axis its operand is split on, so each shard returns the global amax.

Scales that must be global (a per-tensor scale) are computed by the caller outside the kernel,
by XLA, whose reductions under jit are global, and reach every shard replicated. Block scales
are computed inside the kernel from the shard's own blocks, which are whole blocks of the global
operand, so each shard's values are bit-identical to the unsharded kernel's.

With one device in the process the kernels are called directly (no custom call is emitted).
``shard_map`` is the jax API of either name (``jax.shard_map`` from jax 0.7,
``jax.experimental.shard_map.shard_map`` before), for callers that hold their mesh and specs.
"""

from __future__ import annotations

import inspect
import math

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import AxisType, NamedSharding, PartitionSpec

try:
    shard_map = jax.shard_map
except AttributeError:  # jax < 0.7
    from jax.experimental.shard_map import shard_map  # noqa: F401

# the body's collectives are written for per-shard values: no replication check
_NO_CHECK = ({"check_vma": False} if "check_vma" in inspect.signature(shard_map).parameters else {"check_rep": False})


def axes_of(spec_entry) -> tuple[str, ...]:
    """The mesh axes one PartitionSpec entry names (None: none)."""
    return () if spec_entry is None else ((spec_entry,) if isinstance(spec_entry, str) else tuple(spec_entry))


def padded(spec: PartitionSpec, ndim: int) -> tuple:
    """``spec``'s entries, one per dimension."""
    return tuple(spec) + (None,) * (ndim - len(tuple(spec)))


def shards(mesh, entry) -> int:
    """How many pieces a dimension sharded by ``entry`` is cut into on ``mesh``."""
    return math.prod(mesh.shape[a] for a in axes_of(entry))


def spec_of(sharding, ndim: int) -> tuple:
    """The per-dimension mesh axes of a NamedSharding (replicated for any other sharding)."""
    if isinstance(sharding, NamedSharding):
        return padded(sharding.spec, ndim)
    return (None,) * ndim


def per_shard(fn, *, rule, arg_specs, out_specs, nstatic: int = 0):
    """``fn`` (arrays, then ``nstatic`` hashable static arguments) partitioned by the mesh.

    ``rule(ranks, *static)``: the Shardy sharding rule (einsum-like, e.g. ``"i j, -> i j, j i"``)
    relating the dimensions of the operands (of ranks ``ranks``) and results.
    ``arg_specs(mesh, shapes, specs, *static)``: the per-dimension specs (tuples) of the operands
    the kernel runs on, from those XLA proposes (``specs``). ``out_specs(mesh, specs, *static)``:
    the results' specs (a list). Per shard, ``fn(*local_arrays, *static, mesh=mesh, specs=specs)``
    runs; ``mesh=None`` when there is one device.
    """
    def whole(*args):
        return fn(*args, mesh=None, specs=None)

    def call(*args):
        if jax.device_count() == 1:
            return fn(*args, mesh=None, specs=None)
        n = len(args) - nstatic
        arrays, static = args[:n], args[n:]
        mesh = jax.typeof(arrays[0]).sharding.mesh
        if not any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
            return _wrapped(n)(*args)
        # Explicit axes: the shardings are in the operands' types; a shard_map over them
        proposed = [padded(jax.typeof(a).sharding.spec, a.ndim) for a in arrays]
        specs = arg_specs(mesh, [a.shape for a in arrays], proposed, *static)
        arrays = [a if tuple(s) == tuple(p) else jax.sharding.reshard(a, PartitionSpec(*s))
                  for a, s, p in zip(arrays, specs, proposed)]
        outs = out_specs(mesh, specs, *static)
        single = []

        def body(*a):  # results as a tuple, whatever fn returns
            r = fn(*a, *static, mesh=mesh, specs=specs)
            single.append(not isinstance(r, (tuple, list)))
            return (r,) if single[-1] else tuple(r)

        mapped = shard_map(body, mesh=mesh, in_specs=tuple(PartitionSpec(*s) for s in specs),
                           out_specs=tuple(PartitionSpec(*o) for o in outs), **_NO_CHECK)
        r = mapped(*arrays)
        return r[0] if single[-1] else r

    cache = {}

    def _wrapped(n):
        if n in cache:
            return cache[n]
        w = custom_partitioning(whole, static_argnums=tuple(range(n, n + nstatic)))

        def decide(static, mesh, arg_shapes):
            shapes = [tuple(a.shape) for a in arg_shapes]
            proposed = [spec_of(a.sharding, len(a.shape)) for a in arg_shapes]
            specs = arg_specs(mesh, shapes, proposed, *static)
            return specs, out_specs(mesh, specs, *static)

        def named(mesh, specs):
            return [NamedSharding(mesh, PartitionSpec(*s)) for s in specs]

        def partition(*rest):
            *static, mesh, arg_shapes, result_shape = rest
            specs, outs = decide(static, mesh, arg_shapes)

            def local(*arrays):
                return fn(*arrays, *static, mesh=mesh, specs=specs)

            res = named(mesh, outs)
            return mesh, local, (tuple(res) if isinstance(result_shape, (list, tuple)) else res[0]), tuple(named(mesh, specs))

        def infer(*rest):
            *static, mesh, arg_shapes, result_shape = rest
            res = named(mesh, decide(static, mesh, arg_shapes)[1])
            return tuple(res) if isinstance(result_shape, (list, tuple)) else res[0]

        def sdy_rule(*rest):
            *static, mesh, value_types, result_types = rest
            return rule(tuple(t.rank for t in value_types), *static)

        w.def_partition(partition=partition, infer_sharding_from_operands=infer, sharding_rule=sdy_rule)
        cache[n] = w
        return w

    return call
