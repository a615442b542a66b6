"""QuantDense: ``nnx.Linear`` whose GEMMs follow a Recipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from lowprec.nn.base import QuantModule, param
from lowprec.ops import Recipe

default_kernel_init = nnx.initializers.lecun_normal()
default_bias_init = nnx.initializers.zeros_init()


class QuantDense(QuantModule):
    """A drop-in for ``nnx.Linear`` (same arguments, same parameters) plus ``recipe``.

    ``recipe`` (a Recipe or a name from ``lp.recipes``; default ``"none"``, which computes what
    ``nnx.Linear`` computes) sets how each GEMM of the forward and backward pass is quantized.
    ``kernel_axes`` / ``bias_axes`` are logical axis names for sharding (None: no names).
    Stochastic-rounding recipes need ``key=`` (or ``rngs=``, drawing its ``quant`` stream) at call.
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True, dtype=None,
                 param_dtype=jnp.float32, precision=None, kernel_init=default_kernel_init,
                 bias_init=default_bias_init, promote_dtype=dtypes.promote_dtype, preferred_element_type=None,
                 rngs: nnx.Rngs, kernel_metadata: Mapping = MappingProxyType({}),
                 bias_metadata: Mapping = MappingProxyType({}), recipe: Recipe | str = "none",
                 kernel_axes: Sequence[str | None] | None = ("embed", "mlp"),
                 bias_axes: Sequence[str | None] | None = ("mlp",), telemetry: bool = False):
        self.kernel = param(kernel_init, rngs.params(), (in_features, out_features), param_dtype, kernel_axes,
                            kernel_metadata)
        self.bias = (param(bias_init, rngs.params(), (out_features,), param_dtype, bias_axes, bias_metadata)
                     if use_bias else nnx.data(None))
        self.in_features, self.out_features, self.use_bias = in_features, out_features, use_bias
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        self.promote_dtype, self.preferred_element_type = promote_dtype, preferred_element_type
        self._init_quant(recipe, telemetry)

    def __call__(self, inputs, *, key=None, rngs: nnx.Rngs | None = None):
        """``inputs @ kernel + bias`` along the last axis of ``inputs``."""
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)
        return self._dense(inputs, kernel, bias, key=key, rngs=rngs)
