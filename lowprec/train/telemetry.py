"""Per-layer numerics telemetry during training, and the diagnosis of a non-finite loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowprec import ops
from lowprec.models.llama import Llama, cross_entropy
from lowprec.nn import AmaxHistory, GradTelemetry, assign_execution, assign_recipes


def make_telemetry_fn(mcfg, rules, seed: int, execution=None):
    """A jitted ``(params, tokens_BxT, amax=None) -> {name: value}`` over a telemetry-enabled twin
    of the model (same parameters; ``amax``: the model's amax histories, when it has any):
    forward roles from sown intermediates, backward roles from the gradient of each layer's
    telemetry probe. Names: ``<layer path>[<index>]/<role>/<stat>``. ``execution``: the run's
    (``nn.assign_execution``; None: each recipe's own fields)."""
    twin = Llama(mcfg.__class__(**{**mcfg.__dict__, "telemetry": True}), nnx.Rngs(seed))
    assign_recipes(twin, rules)
    assign_execution(twin, execution)
    graphdef, _, probes, own_amax, rest = nnx.split(twin, nnx.Param, GradTelemetry, AmaxHistory, ...)

    def fn(params, tokens_BxT, amax=None):
        amax = own_amax if amax is None else amax

        def loss(param_state, probe_state):  # both differentiated: one trace level for nnx.scan
            model = nnx.merge(graphdef, param_state, probe_state, jax.tree.map(lambda x: x, amax), rest)
            logits = model(tokens_BxT[:, :-1])
            return cross_entropy(logits, tokens_BxT[:, 1:]), nnx.pop(model, nnx.Intermediate)
        (_, grads), inter = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, probes)
        return inter, grads

    return jax.jit(fn)


def flatten(inter, grads) -> dict[str, float]:
    """Named scalars from the telemetry arrays (rows of roles that a recipe leaves alone skipped)."""
    out = {}
    for tree, roles in ((inter, ops.ROLES[:2]), (grads, ops.ROLES[2:])):
        for path, value in nnx.to_flat_state(tree):
            if "finite" in path:
                continue
            arr = _array(value)
            arr = arr.reshape((-1,) + arr.shape[-2:])  # (layers, roles, stats)
            name = "/".join(str(p) for p in path if p not in ("telemetry", "grad_telemetry"))
            for layer in range(arr.shape[0]):
                for r, role in enumerate(ops.ROLES):
                    if role not in roles or not np.any(arr[layer, r]):
                        continue
                    for s, stat in enumerate(ops.telemetry.STATS):
                        idx = f"[{layer}]" if arr.shape[0] > 1 else ""
                        out[f"{name}{idx}/{role}/{stat}"] = float(arr[layer, r, s])
    return out


def _array(value) -> np.ndarray:
    v = value.get_value() if hasattr(value, "get_value") else value
    return np.asarray(v[0] if isinstance(v, tuple) else v)


def first_nonfinite(inter) -> str:
    """The first layer (in depth order) whose attention or MLP output was not finite."""
    for path, value in nnx.to_flat_state(inter):
        if "finite" in path:
            flags = _array(value).reshape(-1, 2)
            for layer, (attn_ok, mlp_ok) in enumerate(flags):
                if not attn_ok or not mlp_ok:
                    return f"layer {layer} {'attention' if not attn_ok else 'MLP'} output"
    return "no layer output (the loss head)"


def nonfinite_params(params) -> list[str]:
    """Paths of parameters holding inf/NaN."""
    return ["/".join(map(str, path)) for path, value in nnx.to_flat_state(params)
            if not np.all(np.isfinite(_array(value)))]
