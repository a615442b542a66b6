"""Frozen linear layers whose kernel is stored as packed codes and scales, for inference.

    layer = lp.nn.QuantizedDense(dense, "nf4")           # a QuantDense's kernel, quantized once
    layer(x_BxD)                                         # x @ dequantized kernel + bias
    lp.nn.QuantizedDense(dense, "nf4_qlora")             # bitsandbytes' NF4, bit for bit
    layer.nbytes()                                       # bytes of codes and scales
    lp.nn.weight_quantizer("int4:block(128)")            # the Quantizer a spec names

QLoRA keeps its frozen base this way (``lowprec.nn.lora``); post-training quantization
(``lowprec.ptq``) replaces trained layers with them. ``QuantizedWeight`` marks the stored codes
and scales so that ``nnx.split`` and checkpoints can tell them from trainable parameters.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from lowprec.formats import get as get_format
from lowprec.formats import pack, unpack
from lowprec.nn.base import QuantModule
from lowprec.nn.dense import QuantDense
from lowprec.quant import Quantizer, presets
from lowprec.quant.nf4_qlora import NF4QLoRA
from lowprec.quant.scaling import SCALE_RULES

POW2_SCALES = tuple(r for r in SCALE_RULES if r.startswith("pow2"))
_E8M0 = get_format("e8m0fnu")


class QuantizedWeight(nnx.Variable):
    """Codes or scales of a frozen quantized kernel (QLoRA's base): stored, never trained."""


def weight_quantizer(spec: str | Quantizer | NF4QLoRA) -> Quantizer | NF4QLoRA:
    """The quantizer a frozen or requantized kernel (in, out) uses, its groups running along the
    contraction (input) axis as in the quantized GEMMs. ``spec``: a Quantizer, a preset name
    (``"nf4"``: lowprec's NF4, blocks of 64 with int8 double-quantized scales, ``"int4_channel"``,
    ``"mxfp4"``, ...), ``"nf4_qlora"`` (bitsandbytes' NF4, bit for bit: an ``NF4QLoRA``, whose
    blocks of 64 run along the inputs of each output as bitsandbytes' do over a torch weight
    (out, in)), a format name (``"int4"``, ``"e2m1fn"``, ...) for one fp32 scale per output
    channel, or ``"<format>:<granularity>"`` (``"int4:block(128)"``: one fp32 scale per group of
    128 inputs)."""
    if isinstance(spec, NF4QLoRA) or spec in presets.WEIGHT_FORMATS:
        return presets.WEIGHT_FORMATS.get(spec, spec).along(0)
    if isinstance(spec, Quantizer):
        q = spec
    elif spec in presets.PRESETS:
        q = presets.get(spec)
    else:
        fmt, _, granularity = str(spec).partition(":")
        try:
            q = Quantizer(fmt, granularity or "channel")
        except (ValueError, KeyError) as e:
            raise ValueError(f"unknown weight format {spec!r}; known: a preset "
                             f"({', '.join([*presets.PRESETS, *presets.WEIGHT_FORMATS])}), "
                             "a format name (int4, int8, e2m1fn, ...) or <format>:<granularity> "
                             "(int4:block(128)); searched, in order: presets.WEIGHT_FORMATS, "
                             f"presets.PRESETS, then lp.formats as <format>[:<granularity>] ({e})") from None
    return q.replace(granularity=q.granularity.along((0,)))


def _over_leading(fn, n: int):
    """``fn`` vmapped over ``n`` leading axes of every argument (stacked layers)."""
    for _ in range(n):
        fn = jax.vmap(fn)
    return fn


@functools.partial(jax.jit, static_argnums=0)
def _quantize(quantizer: Quantizer, kernel):
    """One QTensor per stacked layer of ``kernel`` (one compiled program, not op by op)."""
    return _over_leading(quantizer.quantize, kernel.ndim - 2)(kernel)


def _sharding_axes(variable) -> tuple | None:
    axes = variable.get_metadata().get("out_sharding")
    return tuple(axes) if axes is not None else None


class QuantizedDense(QuantModule):
    """A frozen linear layer whose kernel is held as packed codes and scales (one QTensor per
    stacked layer) and dequantized to the compute dtype in the forward pass; its GEMMs follow
    ``recipe`` like ``QuantDense``'s. Built from a QuantDense."""

    def __init__(self, like: QuantDense, quantizer: str | Quantizer | NF4QLoRA, *, kernel=None, kernel_axes=None,
                 qtensor=None):
        """``like``'s kernel (or ``kernel``, with sharding names ``kernel_axes``) quantized by
        ``weight_quantizer(quantizer)``; or ``qtensor``, codes and scales made elsewhere (e.g. by
        GPTQ; stacked like the kernel, its quantizer ``weight_quantizer(quantizer)``).
        ``like``'s bias, recipe and telemetry probe are kept."""
        quantizer = weight_quantizer(quantizer)
        if kernel is None:
            kernel, kernel_axes = like.kernel[...], kernel_axes or _sharding_axes(like.kernel)
        self.quantizer, self.kernel_shape, self.kernel_axes = quantizer, tuple(kernel.shape), kernel_axes
        self.kernel_dtype = jnp.dtype(kernel.dtype).name
        qt = _quantize(quantizer, kernel) if qtensor is None else qtensor
        if qtensor is not None and (qtensor.quantizer != quantizer or qtensor.shape != self.kernel_shape[-2:]):
            raise ValueError(f"qtensor ({qtensor.quantizer}, shape {qtensor.shape}) does not match the layer's "
                             f"quantizer {quantizer} and kernel shape {self.kernel_shape[-2:]}")
        leaves, self.treedef = jax.tree.flatten(qt)
        codes = leaves[0]
        qlora = isinstance(quantizer, NF4QLoRA)  # its codes come packed, two a byte, as bitsandbytes stores them
        self.bits = 8 if qlora else quantizer.format.bits
        self.code_len, self.codes_ndim = codes.shape[-1], codes.ndim - kernel.ndim + 2
        self.codes = QuantizedWeight(pack(codes, self.bits) if self.bits < 8 else codes)
        # Power-of-two scales (MX's E8M0) are kept as their 8-bit E8M0 codes: exact, 1/4 the bytes.
        self.e8m0_scales = (not qlora and quantizer.scale in POW2_SCALES and not quantizer.tensor_scale
                            and quantizer.double_quant is None)
        scales = leaves[1:]
        if self.e8m0_scales:
            scales = [_E8M0.encode(scales[0])]
        self.scales = nnx.List([QuantizedWeight(x) for x in scales])
        self.bias = like.bias if like.bias is not None else nnx.data(None)
        self.in_features, self.out_features, self.use_bias = like.in_features, like.out_features, like.use_bias
        self.dtype, self.param_dtype, self.precision = like.dtype, like.param_dtype, like.precision
        self.promote_dtype, self.preferred_element_type = like.promote_dtype, like.preferred_element_type
        self.recipe, self.grad_telemetry = like.recipe, like.grad_telemetry
        self.execution = getattr(like, "execution", None)
        history = getattr(like, "amax_history", None)
        self.amax_history = history if history is not None else nnx.data(None)

    def _stack_shape(self) -> tuple[int, ...]:
        return tuple(self.kernel_shape[:-2])

    def dequantized_kernel(self) -> jax.Array:
        """The kernel the codes stand for, in its original dtype (stacked when the layer is)."""
        codes = self.codes[...]
        if self.bits < 8:
            codes = unpack(codes, self.bits, self.code_len)

        def one(*leaves):
            return jax.tree.unflatten(self.treedef, leaves).dequantize()

        scales = [s[...] for s in self.scales]
        if self.e8m0_scales:
            scales = [_E8M0.decode(scales[0])]
        return _over_leading(one, codes.ndim - self.codes_ndim)(codes, *scales)

    def nbytes(self) -> int:
        """Bytes the stored codes and scales take (what replaces the dense kernel)."""
        return sum(v[...].nbytes for v in [self.codes, *self.scales])

    def __call__(self, inputs, *, key=None, rngs: nnx.Rngs | None = None):
        """``inputs @ dequantized kernel + bias`` along the last axis of ``inputs``."""
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, self.dequantized_kernel(), bias), dtype=self.dtype)
        return self._dense(inputs, kernel, bias, key=key, rngs=rngs)
