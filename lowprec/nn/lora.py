"""LoRA adapters on QuantDense layers, QLoRA's frozen quantized base, and merging for deployment.

    paths = lp.nn.apply_lora(model, "attn|mlp", rank=8, alpha=16, rngs=nnx.Rngs(0))       # LoRA
    paths = lp.nn.apply_lora(model, "attn|mlp", rank=8, alpha=16, base="nf4", rngs=...)   # QLoRA
    frozen_kinds = nnx.Any(nnx.Param, lp.nn.QuantizedWeight)
    graphdef, adapters, frozen, rest = nnx.split(model, lp.nn.LoRAParam, frozen_kinds, ...)
    deployed = lp.nn.merge_lora(model, requantize=True)     # W + (alpha/r) A B, back in NF4

A targeted layer computes ``base(x) + (alpha / r) * dropout(x) @ A @ B`` with ``A`` (in, r)
random and ``B`` (r, out) zero, so the adapted model starts equal to the base. Layers stacked
by ``nnx.vmap`` (a kernel of shape (n_layers, in, out)) get stacked adapters and stacked codes,
which ``nnx.scan`` slices like any other parameter. Only ``LoRAParam`` is meant to be trained:
differentiate and optimize with that filter; the base is a plain ``nnx.Param`` (LoRA) or
``QuantizedWeight`` codes and scales (QLoRA), never touched by the optimizer. Inside a
transform, rebuild a frozen state captured from outside before merging
(``jax.tree.map(lambda x: x, frozen)``): ``nnx.scan`` refuses variables of an outer trace level.
"""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from lowprec.nn.dense import QuantDense
# The packed-weight modules lived here before lowprec.nn.packed; re-exported for old imports.
from lowprec.nn.packed import QuantizedDense, QuantizedWeight, _sharding_axes, weight_quantizer
from lowprec.nn.rules import find_layers, replace_layer
from lowprec.quant import Quantizer

log = logging.getLogger(__name__)

_DROPOUT_STREAM = 0x10A  # folded into a layer's key for its dropout mask (kept apart from rounding keys)


class LoRAParam(nnx.Param):
    """A low-rank adapter matrix (``lora_a`` or ``lora_b``): the trainable part of a LoRA model."""


def _param_meta(axes) -> dict:
    return {} if axes is None else dict(out_sharding=tuple(axes), eager_sharding=False)


class LoRADense(nnx.Module):
    """``base(x) + (alpha / rank) * dropout(x) @ lora_a @ lora_b``; ``base`` is a QuantDense (LoRA)
    or a QuantizedDense (QLoRA). ``lora_a`` starts from ``a_init`` (default normal with std
    ``in_features ** -0.5``), ``lora_b`` from zeros. Dropout (rate ``dropout``) acts on the
    adapter's input only, while ``deterministic`` is False, with a mask drawn from the call's
    ``key`` (or ``rngs.dropout()``)."""

    def __init__(self, base: QuantDense | QuantizedDense, rank: int, alpha: float, *, dropout: float = 0.0,
                 a_init=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        check_hyperparameters(rank, alpha, dropout)
        if isinstance(base, QuantizedDense):
            shape, axes = base.kernel_shape, base.kernel_axes
        else:
            shape, axes = tuple(base.kernel.shape), _sharding_axes(base.kernel)
        lead, (n_in, n_out) = shape[:-2], shape[-2:]
        lead_axes = None if axes is None else tuple(axes[:-2])
        a_init = a_init or nnx.initializers.normal(n_in ** -0.5)
        self.base = base
        self.lora_a = LoRAParam(a_init(rngs.params(), lead + (n_in, rank), param_dtype),
                                **_param_meta(None if axes is None else lead_axes + (axes[-2], None)))
        self.lora_b = LoRAParam(jnp.zeros(lead + (rank, n_out), param_dtype),
                                **_param_meta(None if axes is None else lead_axes + (None, axes[-1])))
        self.rank, self.alpha, self.dropout, self.deterministic = rank, float(alpha), float(dropout), False

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def __call__(self, inputs, *, key=None, rngs: nnx.Rngs | None = None):
        y = self.base(inputs, key=key, rngs=rngs)
        h = inputs
        if self.dropout > 0 and not self.deterministic:
            if key is None and rngs is None:
                raise ValueError("LoRA dropout needs key= or rngs= at call (or deterministic=True for evaluation)")
            k = jax.random.fold_in(key if key is not None else rngs.dropout(), _DROPOUT_STREAM)
            keep = jax.random.bernoulli(k, 1.0 - self.dropout, h.shape)
            h = jnp.where(keep, h / (1.0 - self.dropout), jnp.zeros_like(h))
        h, a, b = dtypes.promote_dtype((h, self.lora_a[...], self.lora_b[...]), dtype=self.base.dtype)
        delta = jnp.matmul(jnp.matmul(h, a), b)
        return y + (delta * self.scaling).astype(y.dtype)

    def merged_kernel(self) -> jax.Array:
        """``W + (alpha / rank) A B`` in fp32 (``W`` dequantized for a quantized base)."""
        base = self.base
        w = base.dequantized_kernel() if isinstance(base, QuantizedDense) else base.kernel[...]
        ab = jnp.matmul(self.lora_a[...].astype(jnp.float32), self.lora_b[...].astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST)
        return w.astype(jnp.float32) + self.scaling * ab


def check_hyperparameters(rank, alpha, dropout) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer; got {rank!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"LoRA alpha must be a positive number; got {alpha!r}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"LoRA dropout must be in [0, 1); got {dropout!r}")


def apply_lora(model: nnx.Module, targets: str, rank: int, alpha: float, *, dropout: float = 0.0,
               base: str | Quantizer | None = None, a_init=None, param_dtype=None,
               rngs: nnx.Rngs) -> dict[str, tuple[int, int]]:
    """Wraps every QuantDense whose path (``"blocks/attn/q"``) matches the regular expression
    ``targets`` (``re.search``) in a :class:`LoRADense`, in place. ``base``: None keeps the
    kernel as a frozen Param (LoRA); a format (``weight_quantizer``'s ``spec``, e.g. ``"nf4"``)
    stores it quantized (QLoRA). ``param_dtype``: the adapters' dtype (default: the layer's).
    Returns ``{path: (in_features, out_features)}`` of the adapted layers."""
    check_hyperparameters(rank, alpha, dropout)
    if any(isinstance(m, LoRADense) for _, m in nnx.iter_modules(model)):
        raise ValueError("the model already has LoRA adapters; merge_lora first to adapt it again")
    quantizer = None if base is None else weight_quantizer(base)
    adapted = {}
    for layer in find_layers(model, targets, QuantDense, what="LoRA targets"):
        dense = layer.module
        inner = dense if quantizer is None else QuantizedDense(dense, quantizer)
        replace_layer(model, layer, LoRADense(inner, rank, alpha, dropout=dropout, a_init=a_init,
                                              param_dtype=param_dtype or dense.param_dtype, rngs=rngs))
        adapted[layer.path] = (dense.in_features, dense.out_features)
    log.info("LoRA rank %d alpha %g on %d layers (%s); base %s", rank, alpha, len(adapted), ", ".join(adapted),
             "unquantized" if quantizer is None else quantizer)
    return adapted


def set_deterministic(model: nnx.Module, deterministic: bool = True) -> None:
    """Turns LoRA dropout off (evaluation) or back on, in place."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, LoRADense):
            module.deterministic = deterministic


def merge_lora(model: nnx.Module, requantize: bool | str | Quantizer | None = None) -> nnx.Module:
    """A copy of ``model`` with every LoRADense folded into one layer of kernel
    ``W + (alpha / rank) A B`` (computed in fp32). ``requantize``: None/False gives a QuantDense
    in the base's parameter dtype; True stores the merged kernel back in the base's own format
    (a quantized base only); a format name or Quantizer stores it in that format."""
    merged = nnx.clone(model)
    for layer in find_layers(merged, ".*", LoRADense, required=False):
        lora, base = layer.module, layer.module.base
        quantizer = _requantizer(base, requantize, layer.path)
        axes = base.kernel_axes if isinstance(base, QuantizedDense) else _sharding_axes(base.kernel)
        dtype = base.kernel_dtype if isinstance(base, QuantizedDense) else base.kernel.dtype
        kernel = lora.merged_kernel().astype(dtype)
        if quantizer is not None:
            replace_layer(merged, layer, QuantizedDense(base, quantizer, kernel=kernel, kernel_axes=axes))
        else:
            replace_layer(merged, layer, _dense_with_kernel(base, kernel, axes))
    return merged


def _requantizer(base, requantize, where: str) -> Quantizer | None:
    if requantize is None or requantize is False:
        return None
    if requantize is True:
        if not isinstance(base, QuantizedDense):
            raise ValueError(f"merge_lora(requantize=True) needs a quantized base; {where} is unquantized: "
                             "pass a format name or Quantizer")
        return base.quantizer
    return weight_quantizer(requantize)


def _dense_with_kernel(like, kernel, axes) -> QuantDense:
    """A QuantDense like ``like`` (QuantDense or QuantizedDense) holding ``kernel`` and ``like``'s bias."""
    dense = QuantDense(like.in_features, like.out_features, use_bias=False, dtype=like.dtype,
                       param_dtype=like.param_dtype, precision=like.precision, kernel_init=lambda *_: kernel,
                       promote_dtype=like.promote_dtype, preferred_element_type=like.preferred_element_type,
                       rngs=nnx.Rngs(0), kernel_metadata=_param_meta(axes), recipe=like.recipe)
    dense.bias, dense.use_bias = like.bias if like.bias is not None else nnx.data(None), like.use_bias
    dense.grad_telemetry = like.grad_telemetry
    return dense


def count_params(model: nnx.Module, kind=LoRAParam) -> int:
    """Number of scalars held in ``kind`` variables (default: the adapters)."""
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, kind)))
