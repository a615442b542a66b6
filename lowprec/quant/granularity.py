"""Which elements share a scale: the tensor, vectors along axes, blocks of n, or 2-D tiles."""

from __future__ import annotations

import dataclasses
import math
import re

import jax.numpy as jnp

KINDS = ("tensor", "axis", "block", "tile")


@dataclasses.dataclass(frozen=True)
class Granularity:
    """``kind`` with the ``axes`` a scale is shared along and, for blocks/tiles, their ``size``.

    - ``tensor``: one scale.
    - ``axis``: the amax is reduced over ``axes``; one scale per index of every other axis.
      ``"channel"`` reduces axis 0 (one scale per output channel of an (in, out) kernel);
      ``"token"`` reduces axis -1 (one scale per row/token of an activation).
    - ``block``: blocks of ``size[0]`` consecutive elements along ``axes[0]`` (MX: 32,
      NVFP4: 16); a length not divisible by the block size is zero-padded, never truncated.
    - ``tile``: ``size[0]`` x ``size[1]`` tiles over ``axes`` (default the last two); a size of
      -1 spans the whole axis, e.g. ``"tile(1,-1)"``: one scale per row of the last two axes,
      which in a GEMM stays on its axes (vectors are rebound to the contraction): per input
      channel of an (in, out) kernel.
    """

    kind: str = "tensor"
    axes: tuple[int, ...] = ()
    size: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"granularity kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        need = {"tensor": (0, 0), "axis": (None, 0), "block": (1, 1), "tile": (2, 2)}[self.kind]
        if need[0] is not None and len(self.axes) != need[0] or len(self.size) != need[1]:
            raise ValueError(f"granularity {self.kind!r} takes {need[0]} axes and {need[1]} sizes; "
                             f"got axes={self.axes}, size={self.size}")
        if self.kind == "axis" and not self.axes:
            raise ValueError("granularity 'axis' needs at least one axis to reduce over")
        if any(not isinstance(s, int) or s < 1 and not (self.kind == "tile" and s == -1) for s in self.size):
            raise ValueError(f"block/tile sizes must be positive integers (tiles: or -1, the whole axis); "
                             f"got {self.size}")

    @classmethod
    def parse(cls, spec: str | Granularity) -> Granularity:
        """From ``"tensor"``, ``"channel"``, ``"token"``, ``"axis(0,1)"``, ``"block(32)"``,
        ``"block(32,axis=0)"``, ``"tile(16,16)"`` or a Granularity."""
        if isinstance(spec, Granularity):
            return spec
        s = str(spec).replace(" ", "")
        simple = {"tensor": cls("tensor"), "channel": cls("axis", (0,)), "token": cls("axis", (-1,))}
        if s in simple:
            return simple[s]
        m = re.fullmatch(r"(axis|block|tile)\((.*)\)", s)
        if m is None:
            raise ValueError(f"unknown granularity {spec!r}; known: tensor, channel, token, "
                             "axis(a,...), block(n[,axis=a]), tile(r,c[,axes=a:b])")
        kind, args = m.group(1), [a for a in m.group(2).split(",") if a]
        try:
            if kind == "axis":
                return cls("axis", tuple(int(a) for a in args))
            named = dict(a.split("=") for a in args if "=" in a)
            sizes = tuple(int(a) for a in args if "=" not in a)
            if kind == "block":
                return cls("block", (int(named.get("axis", -1)),), sizes)
            axes = tuple(int(a) for a in named.get("axes", "-2:-1").split(":"))
            return cls("tile", axes, sizes)
        except ValueError as e:
            raise ValueError(f"cannot parse granularity {spec!r}: {e}") from None

    def along(self, contraction_axes: tuple[int, ...]) -> Granularity:
        """This granularity bound to an operand's contraction axes (used by quantized GEMMs):
        vectors and blocks run along the contraction; tensor and tile scaling are unchanged."""
        if self.kind == "axis":
            return dataclasses.replace(self, axes=tuple(contraction_axes))
        if self.kind == "block":
            return dataclasses.replace(self, axes=(contraction_axes[-1],))
        return self

    def __str__(self) -> str:
        if self.kind == "tensor":
            return "tensor"
        if self.kind == "axis":
            return {(0,): "channel", (-1,): "token"}.get(self.axes, f"axis({','.join(map(str, self.axes))})")
        if self.kind == "block":
            return f"block({self.size[0]})" if self.axes == (-1,) else f"block({self.size[0]},axis={self.axes[0]})"
        return f"tile({self.size[0]},{self.size[1]},axes={self.axes[0]}:{self.axes[1]})"

    # ---- reshaping into scale groups ----
    def to_groups(self, x):
        """Reshapes (and zero-pads) ``x`` so that each scale group spans ``reduce_axes``.

        Returns ``(xg, reduce_axes)``; ``from_groups`` undoes it.
        """
        nd = x.ndim
        if self.kind == "tensor":
            return x, tuple(range(nd))
        axes = tuple(_norm(a, nd) for a in self.axes)
        if self.kind == "axis":
            return x, axes
        if self.kind == "tile" and axes[0] == axes[1]:
            raise ValueError(f"tile axes must differ; got {self.axes}")
        sizes = self._sizes(x.shape, axes)
        pads = [(0, 0)] * nd
        for a, n in zip(axes, sizes):
            pads[a] = (0, (-x.shape[a]) % n)
        xp = jnp.pad(x, pads) if any(p[1] for p in pads) else x
        shape, reduce_axes = [], []
        for d in range(nd):
            if d in axes:
                n = sizes[axes.index(d)]
                shape += [xp.shape[d] // n, n]
                reduce_axes.append(len(shape) - 1)
            else:
                shape.append(xp.shape[d])
        return xp.reshape(shape), tuple(reduce_axes)

    def from_groups(self, yg, shape):
        """Inverse of ``to_groups`` for an array of the grouped shape."""
        if self.kind in ("tensor", "axis"):
            return yg
        axes = tuple(_norm(a, len(shape)) for a in self.axes)
        sizes = self._sizes(shape, axes)
        padded = [s + (-s) % sizes[axes.index(d)] if d in axes else s for d, s in enumerate(shape)]
        y = yg.reshape(padded)
        if padded != list(shape):
            y = y[tuple(slice(0, s) for s in shape)]
        return y

    def num_groups(self, shape) -> int:
        """How many scales an array of ``shape`` gets."""
        if self.kind == "tensor":
            return 1
        axes = tuple(_norm(a, len(shape)) for a in self.axes)
        if self.kind == "axis":
            return math.prod(s for d, s in enumerate(shape) if d not in axes)
        n = math.prod(s for d, s in enumerate(shape) if d not in axes)
        return n * math.prod(-(-shape[a] // k) for a, k in zip(axes, self._sizes(shape, axes)))

    def _sizes(self, shape, axes) -> tuple[int, ...]:
        """Block/tile sizes with -1 (the whole axis) resolved for an array of ``shape``."""
        return tuple(shape[a] if k == -1 else k for a, k in zip(axes, self.size))


def _norm(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"granularity axis {axis} is out of range for a {ndim}-D array")
    return axis % ndim
