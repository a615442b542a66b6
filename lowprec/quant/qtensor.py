"""A quantized tensor: integer codes plus the scales that bring them back."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

from lowprec.formats import pack
from lowprec.quant import scaling


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QTensor:
    """Codes (grouped layout of the quantizer's granularity) and fp32 scales.

    ``scale`` holds one value per group (None when double-quantized: then ``scale_q`` and
    ``scale_mean`` rebuild it); ``tensor_scale`` is the fp32 second level of two-level scaling.
    A NaN input survives only in formats with a NaN code (e4m3fn, e5m2, ...): integer, codebook
    and fn-less float codes have none, so there it decodes to a number (``q(x)`` keeps NaN).
    """

    codes: jax.Array
    scale: jax.Array | None
    tensor_scale: jax.Array | None
    scale_q: Any
    scale_mean: jax.Array | None
    quantizer: Any = dataclasses.field(metadata=dict(static=True))
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    dtype: str = dataclasses.field(metadata=dict(static=True))
    scale_shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    def group_scales(self) -> jax.Array:
        if self.scale_q is not None:
            return (self.scale_q.dequantize() + self.scale_mean).reshape(self.scale_shape)
        return self.scale

    def dequantize(self) -> jax.Array:
        q = self.quantizer
        s = scaling.combine(self.group_scales(), self.tensor_scale)
        values = scaling.apply_scale(q.format.decode(self.codes), s)
        return q.granularity.from_groups(values, self.shape).astype(self.dtype)

    def nbytes(self) -> int:
        """Storage size with codes packed densely (e.g. two 4-bit codes per byte) and scales
        in their format (fp32, or 8 bits for formats/E8M0 scales)."""
        q = self.quantizer
        code_bytes = math.ceil(self.codes.size * q.format.bits / 8)
        scale_bits = 32 if q.scale == "fp32" else 8
        if self.scale_q is not None:
            scale_total = self.scale_q.nbytes() + 4
        else:
            scale_total = math.ceil(self.scale.size * scale_bits / 8)
        return code_bytes + scale_total + (4 if self.tensor_scale is not None else 0)

    def packed_codes(self) -> jax.Array:
        """Codes packed densely along the last axis (uint8)."""
        return pack(self.codes, self.quantizer.format.bits)
