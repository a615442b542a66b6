"""QuantDense and QuantDenseGeneral: ``nnx.Linear`` / ``nnx.LinearGeneral`` whose GEMMs follow a Recipe."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from lowprec.nn.base import QuantModule, param
from lowprec import ops
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


class QuantDenseGeneral(QuantModule):
    """A drop-in for ``nnx.LinearGeneral`` (same arguments, same parameters, same output) plus
    ``recipe``: ``inputs`` contracted with ``kernel`` over the ``axis`` dims of ``inputs``, the
    kernel shaped ``in_features + out_features``; the output is the input's other dims followed
    by ``out_features``. The weight's per-channel scales run over all contracted dims (one per
    output element), an activation's per-token scales over its contracted dims: the same
    numbers as ``QuantDense`` on the inputs and kernel with those dims flattened into one.

    ``batch_axis`` (a kernel stacked along leading input dims) is not supported: use
    ``QuantEinsum`` with the batch dim in its spec.
    """

    def __init__(self, in_features: int | Sequence[int], out_features: int | Sequence[int], *,
                 axis: int | Sequence[int] = -1, batch_axis: Mapping = MappingProxyType({}), use_bias: bool = True,
                 dtype=None, param_dtype=jnp.float32, precision=None, kernel_init=default_kernel_init,
                 bias_init=default_bias_init, promote_dtype=dtypes.promote_dtype, preferred_element_type=None,
                 rngs: nnx.Rngs, kernel_metadata: Mapping = MappingProxyType({}),
                 bias_metadata: Mapping = MappingProxyType({}), recipe: Recipe | str = "none",
                 kernel_axes: Sequence[str | None] | None = None, bias_axes: Sequence[str | None] | None = None,
                 telemetry: bool = False):
        if batch_axis:
            raise ValueError(f"QuantDenseGeneral does not support batch_axis (got {dict(batch_axis)}); "
                             "use QuantEinsum with the batch dim in its spec")
        self.in_features, self.out_features, self.axis = _tuple(in_features), _tuple(out_features), _tuple(axis)
        if len(self.in_features) != len(self.axis):
            raise ValueError(f"in_features {self.in_features} and axis {self.axis} must have the same length")
        fan_in, fan_out = math.prod(self.in_features), math.prod(self.out_features)
        shape = self.in_features + self.out_features
        # Initialized as a (fan_in, fan_out) matrix, then reshaped: nnx.LinearGeneral's parameters.
        self.kernel = param(lambda k, s, d: kernel_init(k, (fan_in, fan_out), d).reshape(s), rngs.params(), shape,
                            param_dtype, kernel_axes, kernel_metadata)
        self.bias = (param(lambda k, s, d: bias_init(k, (fan_out,), d).reshape(s), rngs.params(), self.out_features,
                           param_dtype, bias_axes, bias_metadata) if use_bias else nnx.data(None))
        self.use_bias, self.dtype, self.param_dtype, self.precision = use_bias, dtype, param_dtype, precision
        self.promote_dtype, self.preferred_element_type = promote_dtype, preferred_element_type
        self._init_quant(recipe, telemetry)

    def _stack_shape(self) -> tuple[int, ...]:
        return tuple(self.kernel.shape[:self.kernel.ndim - len(self.in_features) - len(self.out_features)])

    def __call__(self, inputs, *, key=None, rngs: nnx.Rngs | None = None):
        """``inputs`` contracted with ``kernel`` over ``axis`` (+ bias)."""
        axis = tuple(a % inputs.ndim for a in self.axis)
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)
        dn = ((axis, tuple(range(len(axis)))), ((), ()))
        y = self._gemm(ops.dot_general, inputs, kernel, dn, key=key, rngs=rngs, precision=self.precision,
                       preferred_element_type=self.preferred_element_type)
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - bias.ndim) + bias.shape)
        return y


def _tuple(x) -> tuple[int, ...]:
    return tuple(x) if isinstance(x, Sequence) else (x,)
