"""A post-training-quantized Llama as packed codes and scales in one safetensors file, with a
JSON header describing each tensor (layout: docs/ptq.md, "Exporting a quantized model").

    save_packed(qmodel, "out/model.packed.safetensors", weights="int4:block(64)")
    model = load_packed("out/model.packed.safetensors")     # the same forward pass, bit for bit

The file holds every Param of the model under its lowprec path (``embed.embedding``,
``blocks.attn_norm.scale``, ...; stacked layers keep their leading layer axis) in its own dtype,
and for each quantized layer ``<path>.codes`` (uint8: two 4-bit codes per byte, low nibble
first, or one code per byte at 8 bits; stacked like the kernel) and ``<path>.scales.<i>``
(``<path>.scales.0`` the group scales; a second, if any, the per-tensor or double-quantization
scales; E8M0 scales as their uint8 codes). The header's ``"lowprec_packed"`` metadata entry is
JSON: ``{"version": 1, "config": LlamaConfig fields, "layers": {path: {"weights": the
weight_quantizer spec, "quantizer": its description, "bits", "code_len", "kernel_shape",
"kernel_dtype", "e8m0_scales", "tensors": {name: {"shape", "dtype"}}}}}``.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowprec.models.hf import _safetensors
from lowprec.models.llama import Llama, LlamaConfig
from lowprec.nn import QuantDense
from lowprec.nn.packed import QuantizedDense
from lowprec.nn.rules import find_layers, replace_layer

KEY, VERSION = "lowprec_packed", 1


def _host(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(jax.device_get(x)))


def save_packed(model: Llama, path: str, weights: str) -> dict:
    """Writes ``model`` (a Llama whose quantized layers are QuantizedDense of ``weights``, e.g.
    ``ptq.quantize_model``'s, round-to-nearest or GPTQ) to the safetensors file ``path``;
    returns the header. Input quantizers (``--activations``) have no place here: refused."""
    _, save_file = _safetensors()
    layers = {}
    tensors = {}
    for path_, module in nnx.iter_modules(model):
        name = ".".join(map(str, path_))
        if isinstance(module, QuantizedDense):
            entry = {"weights": weights, "quantizer": str(module.quantizer), "bits": module.bits,
                     "code_len": module.code_len, "kernel_shape": list(module.kernel_shape),
                     "kernel_dtype": module.kernel_dtype, "e8m0_scales": bool(module.e8m0_scales), "tensors": {}}
            for key, var in [("codes", module.codes), *((f"scales.{i}", s) for i, s in enumerate(module.scales))]:
                tensors[f"{name}.{key}"] = _host(var[...])
                entry["tensors"][key] = {"shape": list(tensors[f"{name}.{key}"].shape),
                                         "dtype": tensors[f"{name}.{key}"].dtype.name}
            layers[name] = entry
        elif type(module).__name__ == "QuantizedInput":
            raise ValueError(f"save_packed: layer {name} quantizes its inputs; export weight-only PTQ "
                             "(no --activations)")
    for path_, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        tensors[".".join(map(str, path_))] = _host(var.get_value())
    header = {"version": VERSION, "config": dataclasses.asdict(model.cfg), "layers": layers}
    save_file(tensors, path, metadata={KEY: json.dumps(header)})
    return header


def read_header(path: str) -> dict:
    safe_open, _ = _safetensors()
    with safe_open(path, framework="np") as f:
        meta = f.metadata() or {}
    if KEY not in meta:
        raise ValueError(f"{path}: no {KEY!r} header (not written by save_packed)")
    header = json.loads(meta[KEY])
    if header.get("version") != VERSION:
        raise ValueError(f"{path}: {KEY} version {header.get('version')!r}; this lowprec reads {VERSION}")
    return header


def load_packed(path: str, **overrides) -> Llama:
    """The Llama saved by ``save_packed`` in ``path``, its quantized layers QuantizedDense holding
    the stored codes and scales; ``overrides``: LlamaConfig fields (e.g. ``dtype``)."""
    safe_open, _ = _safetensors()
    header = read_header(path)
    cfg = LlamaConfig(**{**header["config"], **overrides})
    model = nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0)))
    with safe_open(path, framework="np") as f:
        def get(name, like=None):
            value = f.get_tensor(name)
            if like is not None and tuple(value.shape) != tuple(like.shape):
                raise ValueError(f"{path}: {name} has shape {value.shape}; the model needs {tuple(like.shape)}")
            return jnp.asarray(value)

        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        for path_, var in nnx.to_flat_state(params):
            name = ".".join(map(str, path_))
            if name.rsplit(".", 1)[0] not in header["layers"]:
                var.set_value(get(name, var.get_value()))
        for _, var in nnx.to_flat_state(rest):
            var.set_value(jnp.zeros(var.get_value().shape, var.get_value().dtype))
        model = nnx.merge(graphdef, params, rest)
        by_path = {".".join(layer.path.split("/")): layer for layer in find_layers(model, ".*", QuantDense)}
        for name, entry in header["layers"].items():
            if name not in by_path:
                raise ValueError(f"{path}: quantized layer {name} is not a layer of the configured Llama")
            dense = by_path[name].module
            shape, dtype = tuple(entry["kernel_shape"]), entry["kernel_dtype"]
            new = QuantizedDense(dense, entry["weights"], kernel=jnp.zeros(shape, dtype), kernel_axes=None)
            if new.bits != entry["bits"] or new.code_len != entry["code_len"]:
                raise ValueError(f"{path}: layer {name}: weights {entry['weights']!r} give {new.bits}-bit codes of "
                                 f"length {new.code_len}; the file has {entry['bits']} and {entry['code_len']}")
            new.codes.set_value(get(f"{name}.codes", new.codes.get_value()))
            for i, s in enumerate(new.scales):
                s.set_value(get(f"{name}.scales.{i}", s.get_value()))
            replace_layer(model, by_path[name], new)
    return model
