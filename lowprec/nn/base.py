"""What the quantized NNX modules share: a recipe, explicit stochastic-rounding keys, telemetry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
from flax import nnx

from lowprec import ops
from lowprec.ops import recipes


class GradTelemetry(nnx.Variable):
    """Zeros whose gradient holds a layer's backward-role telemetry (rows ``ops.ROLES``, columns
    ``ops.telemetry.STATS``). Differentiate with respect to it to read them, e.g.
    ``nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Any(nnx.Param, lp.nn.GradTelemetry)))``."""


class QuantModule(nnx.Module):
    """A module whose GEMMs follow ``self.recipe`` (set it directly or with ``assign_recipes``).

    With ``telemetry=True`` the forward roles' statistics are sown as ``nnx.Intermediate``
    ``"telemetry"`` (read them with ``nnx.capture(model, nnx.Intermediate)``) and the backward
    roles' arrive as the gradient of ``grad_telemetry``.
    """

    def _init_quant(self, recipe, telemetry: bool) -> None:
        self.recipe = recipes.get(recipe)
        self.grad_telemetry = GradTelemetry(ops.telemetry.probe()) if telemetry else nnx.data(None)

    def _dense(self, inputs, kernel, bias, *, key, rngs):
        """``inputs @ kernel (+ bias)`` along the last axis of ``inputs``, per the recipe."""
        dn = (((inputs.ndim - 1,), (0,)), ((), ()))
        y = self._gemm(ops.dot_general, inputs, kernel, dn, key=key, rngs=rngs, precision=self.precision,
                       preferred_element_type=self.preferred_element_type)
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y

    def _gemm(self, op, *args, key, rngs, **kwargs):
        """``op(*args, recipe, key, ...)`` (``ops.dot_general`` or ``ops.einsum``), sowing telemetry."""
        if key is None and rngs is not None and recipes.get(self.recipe).needs_key():
            key = rngs.quant()
        probe = None if self.grad_telemetry is None else self.grad_telemetry[...]
        out = op(*args, self.recipe, key, probe=probe, **kwargs)
        if probe is None:
            return out
        y, stats = out
        self.sow(nnx.Intermediate, "telemetry", stats)
        return y


def param(init, key, shape, dtype, axes: Sequence[str | None] | None, metadata: Mapping) -> nnx.Param:
    """A parameter carrying logical axis names (``out_sharding`` metadata) unless ``init`` or
    ``metadata`` already set them; the names are mapped onto a mesh by sharding rules."""
    value = init(key, shape, dtype)
    meta = dict(metadata)
    if axes is not None and not isinstance(value, nnx.VariableMetadata) and "out_sharding" not in meta:
        if len(axes) != len(shape):
            raise ValueError(f"axes {tuple(axes)} must name each of the {len(shape)} dims of shape {shape}")
        meta.update(out_sharding=tuple(axes), eager_sharding=False)
    return nnx.Param(value, **meta)
