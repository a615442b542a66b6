"""Hugging Face Llama checkpoints in and out: ``config.json`` + safetensors (one file, or shards
named by ``model.safetensors.index.json``) to lowprec's :class:`Llama` and back.

The loaded model is lowprec's own Llama, so recipes, telemetry, sharding, PTQ and fine-tuning
apply to it unchanged. Names and conventions, with sources: docs/reference/hf.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowprec.models.llama import Llama, LlamaConfig

log = logging.getLogger(__name__)

CONFIG, INDEX, SINGLE = "config.json", "model.safetensors.index.json", "model.safetensors"
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}
# lowprec parameter path -> (Hugging Face tensor name, whether the HF matrix is the kernel transposed).
# HF's nn.Linear stores (out, in); a lowprec kernel is (in, out). Per-layer names follow
# "model.layers.{i}."; the stacked lowprec parameter holds layer i at index i.
LAYER = {
    ("attn_norm", "scale"): ("input_layernorm.weight", False),
    ("attn", "q", "kernel"): ("self_attn.q_proj.weight", True),
    ("attn", "k", "kernel"): ("self_attn.k_proj.weight", True),
    ("attn", "v", "kernel"): ("self_attn.v_proj.weight", True),
    ("attn", "o", "kernel"): ("self_attn.o_proj.weight", True),
    ("mlp_norm", "scale"): ("post_attention_layernorm.weight", False),
    ("mlp", "gate", "kernel"): ("mlp.gate_proj.weight", True),
    ("mlp", "up", "kernel"): ("mlp.up_proj.weight", True),
    ("mlp", "down", "kernel"): ("mlp.down_proj.weight", True),
}
TOP = {
    ("embed", "embedding"): ("model.embed_tokens.weight", False),
    ("final_norm", "scale"): ("model.norm.weight", False),
    ("lm_head", "kernel"): ("lm_head.weight", True),
}
# Buffers some checkpoints carry that the model recomputes (older transformers saved inv_freq).
IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
DTYPES = ("float32", "bfloat16", "float16")


def _safetensors():
    try:
        import safetensors  # noqa: F401 (the optional extra "hf")
        from safetensors.numpy import save_file
    except ImportError as e:
        raise ImportError("reading and writing Hugging Face checkpoints needs safetensors: "
                          "pip install 'lowprec[hf]'") from e
    return safetensors.safe_open, save_file


def _refuse(field: str, value, allowed: str):
    raise ValueError(f"{CONFIG}: {field}={value!r} is not supported; allowed: {allowed}")


def _rope_theta(hf: dict) -> float:
    """rope_theta from transformers 4's top-level fields or transformers 5's rope_parameters; only
    unscaled ("default") rotary embeddings are supported."""
    scaling = hf.get("rope_scaling")
    if scaling is not None and (scaling.get("rope_type") or scaling.get("type")) != "default":
        _refuse("rope_scaling", scaling, "null (unscaled rotary embeddings)")
    params = hf.get("rope_parameters") or {}
    if params.get("rope_type", "default") != "default":
        _refuse("rope_parameters.rope_type", params["rope_type"], "'default'")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, **overrides) -> LlamaConfig:
    """The LlamaConfig of a Hugging Face Llama/Mistral ``config.json`` (a dict), defaults as
    transformers' LlamaConfig; ``overrides`` set lowprec-only fields (dtype, telemetry, ...).
    Raises ValueError naming the first field whose value lowprec's Llama does not compute."""
    arch = hf.get("architectures") or []
    if len(arch) != 1 or arch[0] not in ARCHITECTURES:
        _refuse("architectures", arch, ", ".join(ARCHITECTURES))
    if hf.get("model_type") != ARCHITECTURES[arch[0]]:
        _refuse("model_type", hf.get("model_type"), repr(ARCHITECTURES[arch[0]]))
    for field, allowed, spelled in (("hidden_act", "silu", "'silu'"), ("attention_bias", False, "false"),
                                    ("mlp_bias", False, "false"), ("sliding_window", None, "null (full attention)"),
                                    ("attention_dropout", 0.0, "0.0"), ("quantization_config", None, "null")):
        if hf.get(field, allowed) != allowed:
            _refuse(field, hf[field], spelled)
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    fields = dict(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
                  n_heads=heads, n_kv_heads=hf.get("num_key_value_heads") or heads, d_ff=hf["intermediate_size"],
                  max_seq_len=hf.get("max_position_embeddings", 2048), rope_theta=_rope_theta(hf),
                  norm_eps=float(hf.get("rms_norm_eps", 1e-6)), d_head=head_dim,
                  tie_embeddings=bool(hf.get("tie_word_embeddings", False)), scale_tied_logits=False)
    return LlamaConfig(**{**fields, **overrides})


def config_to_hf(cfg: LlamaConfig, dtype: str) -> dict:
    """The ``config.json`` of a LlamaForCausalLM computing what ``cfg``'s model computes (the
    tied head unscaled: see ``save_hf``)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "rope_scaling": None, "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
            "mlp_bias": False, "tie_word_embeddings": cfg.tie_embeddings and not cfg.scale_tied_logits,
            "torch_dtype": dtype}


def _expected(cfg: LlamaConfig) -> dict:
    """HF tensor name -> (lowprec path, layer index or None, transposed) for ``cfg``'s model."""
    out = {name: (path, None, t) for path, (name, t) in TOP.items()}
    if cfg.tie_embeddings:
        del out["lm_head.weight"]
    for i in range(cfg.n_layers):
        out.update({f"model.layers.{i}.{name}": (("blocks",) + path, i, t) for path, (name, t) in LAYER.items()})
    return out


def _files(path: str) -> dict[str, str]:
    """Tensor name -> the safetensors file (full path) that holds it."""
    index = os.path.join(path, INDEX)
    if os.path.exists(index):
        with open(index) as f:
            return {name: os.path.join(path, file) for name, file in json.load(f)["weight_map"].items()}
    single = os.path.join(path, SINGLE)
    if not os.path.exists(single):
        raise FileNotFoundError(f"{path}: neither {SINGLE} nor {INDEX}")
    safe_open, _ = _safetensors()
    with safe_open(single, framework="np") as f:
        return {name: single for name in f.keys()}


def read_config(path: str) -> dict:
    with open(os.path.join(path, CONFIG)) as f:
        return json.load(f)


def load_hf(path: str, dtype: str = "bfloat16", param_dtype: str = "float32", **overrides) -> Llama:
    """lowprec's Llama holding the Hugging Face checkpoint in directory ``path``.

    ``dtype``: the activations' compute dtype; ``param_dtype``: the parameters' storage (float32
    holds bfloat16/float16 checkpoints exactly); ``overrides``: other LlamaConfig fields. The
    tied head's logits are not scaled (``scale_tied_logits=False``), as in transformers; a tied
    checkpoint's ``lm_head.weight``, if present, is ignored (transformers ties it to the table).
    """
    safe_open, _ = _safetensors()
    cfg = config_from_hf(read_config(path), dtype=dtype, param_dtype=param_dtype, **overrides)
    files, expected = _files(path), _expected(cfg)
    missing = sorted(set(expected) - set(files))
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {len(missing)} tensors the config needs, e.g. {missing[0]!r}")
    extra = sorted(n for n in files if n not in expected and not IGNORED.fullmatch(n)
                   and not (cfg.tie_embeddings and n == "lm_head.weight"))
    if extra:
        raise ValueError(f"{path}: checkpoint holds {len(extra)} tensors a {cfg.n_layers}-layer Llama has no place "
                         f"for, e.g. {extra[0]!r}")
    model = nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    flat = dict(nnx.to_flat_state(params))
    arrays = {path_: [None] * cfg.n_layers if path_[0] == "blocks" else None for path_ in flat}
    with contextlib.ExitStack() as stack:
        handles = {file: stack.enter_context(safe_open(file, framework="np")) for file in set(files.values())}
        for name, (path_, layer, transposed) in expected.items():
            value = handles[files[name]].get_tensor(name)
            value = value.T if transposed else value
            want = tuple(flat[path_].get_value().shape[0 if layer is None else 1:])
            if value.shape != want:
                hf_shape = (lambda s: s[::-1] if transposed else s)
                raise ValueError(f"{name}: shape {hf_shape(value.shape)} in the checkpoint; {CONFIG} needs "
                                 f"{hf_shape(want)}")
            value = value.astype(np.dtype(param_dtype))
            if layer is None:
                arrays[path_] = value
            else:
                arrays[path_][layer] = value
    for path_, var in flat.items():
        value = arrays[path_]
        var.set_value(jnp.asarray(np.stack(value) if isinstance(value, list) else value))
    for _, var in nnx.to_flat_state(rest):  # telemetry probes and amax histories start at zero, as at init
        var.set_value(jnp.zeros(var.get_value().shape, var.get_value().dtype))
    return nnx.merge(graphdef, params, rest)


def _tensors(model: Llama, dtype: str) -> dict[str, np.ndarray]:
    """HF tensor name -> array (``dtype``) of ``model``'s parameters, refusing any it has beyond a
    plain Llama's (LoRA adapters: merge them first)."""
    cfg = model.cfg
    flat = {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    expected = _expected(cfg)
    extra = sorted(set(flat) - {p for p, _, _ in expected.values()})
    if extra:
        raise ValueError(f"save_hf: the model has parameters a Llama checkpoint has no place for, e.g. "
                         f"{'.'.join(map(str, extra[0]))} (merge adapters into the base weights first)")
    host = {path: np.asarray(jax.device_get(value)) for path, value in flat.items()}
    out = {}
    for name, (path, layer, transposed) in expected.items():
        value = host[path] if layer is None else host[path][layer]
        out[name] = np.ascontiguousarray((value.T if transposed else value).astype(np.dtype(dtype)))
    if cfg.tie_embeddings and cfg.scale_tied_logits:  # lowprec's scaled tied head, as an untied one
        table = host[("embed", "embedding")].astype(np.float32)
        out["lm_head.weight"] = (table * np.float32(cfg.d_model ** -0.5)).astype(np.dtype(dtype))
    return out


def save_hf(model: Llama, path: str, *, dtype: str | None = None, max_shard_size: int | None = None) -> None:
    """Writes ``model`` to directory ``path`` as a transformers LlamaForCausalLM checkpoint.

    ``dtype``: of the saved tensors (default: the parameters'); ``max_shard_size``: bytes per file,
    beyond which tensors go to shards ``model-0000i-of-0000n.safetensors`` named by
    ``model.safetensors.index.json``. A tied model whose logits lowprec scales by d_model^-0.5
    (its own initialization) is saved untied, with ``lm_head.weight`` the scaled table, since
    transformers' tied head has no scale. Earlier checkpoint files in ``path`` are removed.
    """
    _, save_file = _safetensors()
    dtype = dtype or jnp.dtype(model.cfg.param_dtype).name
    if dtype not in DTYPES:
        raise ValueError(f"save_hf: dtype={dtype!r}; allowed: {', '.join(DTYPES)}")
    tensors = _tensors(model, dtype)
    if model.cfg.tie_embeddings and model.cfg.scale_tied_logits:
        log.info("save_hf: lowprec's tied head scales logits by d_model^-0.5; saved untied (lm_head = scaled table)")
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name == INDEX or re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors", name):
            os.remove(os.path.join(path, name))
    shards, size = [[]], 0
    for name, value in tensors.items():
        if max_shard_size and shards[-1] and size + value.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += value.nbytes
    meta = {"format": "pt"}  # transformers reads the tensors as PyTorch's
    if len(shards) == 1:
        save_file(tensors, os.path.join(path, SINGLE), metadata=meta)
    else:
        weight_map = {}
        for i, names in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({n: tensors[n] for n in names}, os.path.join(path, file), metadata=meta)
            weight_map.update({n: file for n in names})
        index = {"metadata": {"total_size": sum(v.nbytes for v in tensors.values())}, "weight_map": weight_map}
        with open(os.path.join(path, INDEX), "w") as f:
            json.dump(index, f, indent=2)
    with open(os.path.join(path, CONFIG), "w") as f:
        json.dump(config_to_hf(model.cfg, dtype), f, indent=2)
