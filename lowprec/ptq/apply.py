"""Quantize a trained model's linear layers after training: weights by round-to-nearest or
GPTQ, optionally inputs with calibrated static scales; per-layer error report."""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowprec.nn import QuantDense
from lowprec.nn.packed import QuantizedDense, weight_quantizer
from lowprec.nn.rules import find_layers, replace_layer
from lowprec.ptq import calibration, capture
from lowprec.ptq.gptq import gptq
from lowprec.ptq.modules import QuantizedInput
from lowprec.quant import Quantizer

log = logging.getLogger(__name__)

METHODS = ("rtn", "gptq")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What to quantize and how.

    ``weights``: a weight format (``lp.nn.weight_quantizer``'s spec: ``"int4"`` per output
    channel, ``"int4:block(128)"`` per group, ``"nf4"``, ``"nf4_qlora"`` (rtn only), ``"mxfp4"``, ``"nvfp4"``,
    ``"e4m3fn"``, ...); ``method``: ``"rtn"`` (round to nearest) or ``"gptq"``; ``targets``: a
    regular expression over layer paths (default: every attention and MLP layer, leaving the
    embeddings and LM head as they are); ``activations``: a format for the targeted layers'
    inputs ("" keeps them), calibrated by ``act_calibration`` (``absmax``, ``percentile`` at
    ``percentile``, ``mse``, or ``dynamic`` per-token scales); ``damp``: GPTQ's dampening.
    """

    weights: str = "int4"
    method: str = "rtn"
    targets: str = "attn|mlp"
    activations: str = ""
    act_calibration: str = "absmax"
    percentile: float = 99.99
    damp: float = 0.01

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown ptq method {self.method!r}; known: {', '.join(METHODS)}")
        if not isinstance(weight_quantizer(self.weights), Quantizer) and self.method == "gptq":
            raise ValueError(f"ptq weights {self.weights!r} (a stored format) take method rtn only; "
                             "gptq needs a Quantizer")
        calibration.check_method(self.act_calibration)
        if self.activations:
            calibration.activation_quantizer(self.activations, self.act_calibration)
        if not self.damp > 0:
            raise ValueError(f"damp must be positive; got {self.damp}")

    def needs_calibration(self) -> bool:
        return self.method == "gptq" or bool(self.activations and self.act_calibration != "dynamic")

    def __str__(self) -> str:
        s = f"W:{self.weights}/{self.method}"
        return s + (f" A:{self.activations}/{self.act_calibration}" if self.activations else "")


def _sqnr_db(signal, noise) -> np.ndarray:
    return 10 * np.log10(np.maximum(signal, 1e-30) / np.maximum(noise, 1e-30))


def layer_errors(kernel, dequantized, gram=None) -> dict:
    """Per stacked layer: weight SQNR (dB) and, given the calibration Gram matrix, the SQNR of
    the layer's output on the calibration inputs, ``|XW|^2 / |X(W - Q)|^2`` from ``X^T X``."""
    w = np.asarray(kernel, np.float64)
    d = w - np.asarray(dequantized, np.float64)
    out = {"weight_sqnr_db": _sqnr_db((w ** 2).sum((-2, -1)), (d ** 2).sum((-2, -1))).tolist()}
    if gram is not None:
        h = np.asarray(gram, np.float64)
        out["output_sqnr_db"] = _sqnr_db(np.sum(w * (h @ w), axis=(-2, -1)),     # tr(W^T H W), by matmul
                                         np.sum(d * (h @ d), axis=(-2, -1))).tolist()
    return out


@functools.partial(jax.jit, static_argnums=(0, 3))
def _gptq_stacked(quantizer, kernel, gram, damp):
    """GPTQ of each stacked layer of ``kernel`` (leading axes), compiled once per shape."""
    fn = functools.partial(gptq, quantizer, damp=damp)
    for _ in range(kernel.ndim - 2):
        fn = jax.vmap(fn)
    return fn(kernel, gram)


def quantize_model(model: nnx.Module, spec: Spec, calibration_batches=()) -> tuple[nnx.Module, dict]:
    """A copy of ``model`` with the targeted QuantDense layers replaced by packed quantized
    layers (and input quantizers), and ``{layer path: errors}`` (``layer_errors``, plus the
    calibrated input clips). ``calibration_batches``: token arrays ``(B, T)``, needed by GPTQ
    and by calibrated activations; given with any spec, they also give each layer's output SQNR."""
    quantized, calibration_batches = nnx.clone(model), list(calibration_batches)
    needed = spec.needs_calibration() or calibration_batches
    stats = capture.collect(quantized, spec.targets, calibration_batches) if needed else {}
    wq = weight_quantizer(spec.weights)
    aq = calibration.activation_quantizer(spec.activations, spec.act_calibration) if spec.activations else None
    report = {}
    for layer in find_layers(quantized, spec.targets, QuantDense, what="ptq targets"):
        dense, st = layer.module, stats.get(layer.path)
        kernel = dense.kernel[...]
        qt = _gptq_stacked(wq, kernel, jnp.asarray(st.gram), spec.damp) if spec.method == "gptq" else None
        new = QuantizedDense(dense, wq, qtensor=qt)
        report[layer.path] = layer_errors(kernel, new.dequantized_kernel(), None if st is None else st.gram)
        report[layer.path]["weights"] = int(kernel.size)
        if aq is not None:
            clip = None
            if aq.source == "delayed":
                clip = calibration.clip_values(aq, spec.act_calibration, st.absmax, st.rows, spec.percentile)
                report[layer.path]["input_clip"] = np.asarray(clip).tolist()
                report[layer.path]["input_absmax"] = np.asarray(st.absmax).tolist()
                clip = np.asarray(clip)[..., None]
            new = QuantizedInput(new, aq, clip)
        replace_layer(quantized, layer, new)
    log.info("ptq %s on %d layers (%s)", spec, len(report), spec.targets)
    return quantized, report
