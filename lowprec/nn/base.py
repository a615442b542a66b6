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


class AmaxHistory(nnx.Variable):
    """A delayed-scaling layer's amax history (rows ``ops.ROLES``, newest amax first; stacked like
    the layer's kernel). Its gradient is the updated history: differentiate with respect to it
    too and assign the result after each step, e.g. with ``update_amax_histories``."""


class QuantModule(nnx.Module):
    """A module whose GEMMs follow ``self.recipe`` (set it directly or with ``assign_recipes``).

    With ``telemetry=True`` the forward roles' statistics are sown as ``nnx.Intermediate``
    ``"telemetry"`` (read them with ``nnx.capture(model, nnx.Intermediate)``) and the backward
    roles' arrive as the gradient of ``grad_telemetry``. A recipe with delayed scaling gives the
    layer an ``amax_history`` (an :class:`AmaxHistory`; ``sync_amax_history`` after setting
    ``recipe`` directly, which ``assign_recipes`` does).

    ``execution`` (a ``quant.Execution`` or None: the recipe's own fields) chooses how its GEMMs
    compute the recipe's bits (``assign_execution`` sets it on every layer of a model).

    A stacked layer (``nnx.vmap``-made) whose layers follow different recipes holds a tuple of
    them, one per layer (``assign_recipes`` with layer-index rules); it cannot be called as a
    whole: run it one layer (or run of equal layers) at a time with ``recipe`` set to that
    layer's, as ``models.llama`` does.
    """

    def _init_quant(self, recipe, telemetry: bool) -> None:
        self.recipe = recipe_value(recipe)
        self.execution = None
        self.grad_telemetry = GradTelemetry(ops.telemetry.probe()) if telemetry else nnx.data(None)
        self.sync_amax_history()

    def _stack_shape(self) -> tuple[int, ...]:
        """The leading dims the layer is stacked along (``nnx.vmap``-made layers), else ()."""
        return tuple(self.kernel.shape[:-2])

    def sync_amax_history(self) -> None:
        """An empty amax history (zeros, stacked like the kernel) when ``recipe`` scales a role
        from one and the layer has none of the right shape; none when it scales no role so."""
        recipe = _history_recipe(self.recipe)
        if not recipe.delayed_roles():
            self.amax_history = nnx.data(None)
            return
        shape = self._stack_shape() + (len(ops.ROLES), recipe.amax_history_len)
        current = getattr(self, "amax_history", None)
        if current is None or tuple(current.shape) != shape:
            self.amax_history = AmaxHistory(jnp.zeros(shape, jnp.float32))

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
        if isinstance(self.recipe, tuple):
            raise ValueError(f"this stacked layer's recipe differs per layer ({', '.join(r.name or str(r) for r in self.recipe)}); "
                             "call one layer at a time with recipe set to that layer's (models.llama does)")
        if key is None and rngs is not None and recipes.get(self.recipe).needs_key():
            key = rngs.quant()
        probe = None if self.grad_telemetry is None else self.grad_telemetry[...]
        history = getattr(self, "amax_history", None)
        if history is not None:
            kwargs["amax_history"] = history[...]
        execution = getattr(self, "execution", None)  # None in a module made before the field existed
        out = op(*args, self.recipe, key, probe=probe, execution=execution, **kwargs)
        if probe is None:
            return out
        y, stats = out
        self.sow(nnx.Intermediate, "telemetry", stats)
        return y


def recipe_value(recipe):
    """A Recipe from a Recipe or name; a tuple or list (one per stacked layer) gives a tuple of
    Recipes, or the one Recipe when all are equal."""
    if isinstance(recipe, (tuple, list)):
        per_layer = tuple(recipes.get(r) for r in recipe)
        return per_layer[0] if len(set(per_layer)) == 1 else per_layer
    return recipes.get(recipe)


def _history_recipe(recipe):
    """The recipe whose delayed roles size a layer's amax history: per-layer recipes must agree
    on whether and how long they keep one."""
    if not isinstance(recipe, tuple):
        return recipes.get(recipe)
    kinds = {(bool(r.delayed_roles()), r.amax_history_len if r.delayed_roles() else 0) for r in recipe}
    if len(kinds) > 1:
        raise ValueError("per-layer recipes of one stacked layer must all use delayed scaling with one "
                         f"amax_history_len, or none: got {', '.join(r.name or str(r) for r in recipe)}")
    return recipe[0]


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


def update_amax_histories(model: nnx.Module, grads: nnx.State) -> None:
    """Sets every ``AmaxHistory`` of ``model`` to its gradient in ``grads`` (the updated history;
    see ``ops.dot``), e.g. after ``nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Any(nnx.Param,
    AmaxHistory)))``."""
    nnx.update(model, nnx.filter_state(grads, AmaxHistory))
