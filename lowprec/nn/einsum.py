"""QuantEinsum: ``nnx.Einsum`` whose GEMMs follow a Recipe (attention projections and the like)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from lowprec import ops
from lowprec.nn.base import QuantModule, param
from lowprec.nn.dense import default_bias_init, default_kernel_init
from lowprec.ops import Recipe


class QuantEinsum(QuantModule):
    """A drop-in for ``nnx.Einsum`` plus ``recipe``: ``einsum(einsum_str, inputs, kernel) + bias``.

    The input is the activation and the kernel the weight, e.g. ``"btd,dnh->btnh"`` for a
    query projection; the weight's per-channel scales then run over ``d`` (its contraction).
    ``kernel_axes`` / ``bias_axes``: logical axis names of the kernel / bias dims (None: none).
    """

    def __init__(self, einsum_str: str, kernel_shape: Sequence[int], bias_shape: Sequence[int] | None = None, *,
                 dtype=None, param_dtype=jnp.float32, precision=None, kernel_init=default_kernel_init,
                 bias_init=default_bias_init, promote_dtype=dtypes.promote_dtype, preferred_element_type=None,
                 rngs: nnx.Rngs, kernel_metadata: Mapping = MappingProxyType({}),
                 bias_metadata: Mapping = MappingProxyType({}), recipe: Recipe | str = "none",
                 kernel_axes: Sequence[str | None] | None = None, bias_axes: Sequence[str | None] | None = None,
                 telemetry: bool = False):
        self.einsum_str = einsum_str.replace(" ", "")
        self.kernel_shape, self.bias_shape = tuple(kernel_shape), None if bias_shape is None else tuple(bias_shape)
        self.kernel = param(kernel_init, rngs.params(), self.kernel_shape, param_dtype, kernel_axes, kernel_metadata)
        self.bias = (param(bias_init, rngs.params(), self.bias_shape, param_dtype, bias_axes, bias_metadata)
                     if bias_shape is not None else nnx.data(None))
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        self.promote_dtype, self.preferred_element_type = promote_dtype, preferred_element_type
        self._init_quant(recipe, telemetry)

    def _stack_shape(self) -> tuple[int, ...]:
        return tuple(self.kernel.shape[:self.kernel.ndim - len(self.kernel_shape)])

    def __call__(self, inputs, einsum_str: str | None = None, *, key=None, rngs: nnx.Rngs | None = None):
        spec = (einsum_str or self.einsum_str).replace(" ", "")
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)
        y = self._gemm(ops.einsum, spec, inputs, kernel, key=key, rngs=rngs, precision=self.precision,
                       preferred_element_type=self.preferred_element_type)
        if bias is not None:
            y += jnp.reshape(bias, _bias_shape(spec, y.ndim, self.kernel_shape))
        return y


def _bias_shape(spec: str, out_ndim: int, kernel_shape) -> tuple[int, ...]:
    """The bias broadcast over the output: the kernel's dims that survive into it, else 1."""
    ins, out = spec.split("->")
    rhs = ins.split(",")[1]
    head, ellipsis, tail = out.partition("...")
    letters = (head + "." * (out_ndim - len(head) - len(tail)) + tail) if ellipsis else out
    return tuple(kernel_shape[rhs.index(c)] if c in rhs else 1 for c in letters)
