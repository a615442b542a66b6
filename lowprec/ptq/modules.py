"""The module post-training quantization puts in front of a layer whose inputs it quantizes."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from lowprec.quant import Quantizer


class ActivationClip(nnx.Variable):
    """A layer's calibrated input clipping value (one per stacked layer, shape (..., 1))."""


class QuantizedInput(nnx.Module):
    """``inner(quantizer(x))``: the input rounded to an activation format, with a static scale
    from the calibrated ``clip`` (``source="delayed"`` quantizers) or a dynamic one."""

    def __init__(self, inner: nnx.Module, quantizer: Quantizer, clip=None):
        if quantizer.source == "delayed" and clip is None:
            raise ValueError("a calibrated (source='delayed') input quantizer needs clip values")
        self.inner, self.quantizer = inner, quantizer
        self.clip = ActivationClip(jnp.asarray(clip, jnp.float32)) if clip is not None else nnx.data(None)

    def __call__(self, inputs, *, key=None, rngs=None):
        history = None if self.clip is None else self.clip[...]
        return self.inner(self.quantizer(inputs, amax_history=history), key=key, rngs=rngs)
