"""The run config's schema: every field with its default, meaning and allowed values, and how a
config.json written by an older version is brought up to date.

    cfg = schema.defaults()            # every field at its default; configs/lm.py sets sizes, presets
    schema.docs()["optim.lr"]          # a field's one-line meaning (--helpconfig, docs/training.md)
    schema.check(cfg)                  # ConfigError: one line naming the field and what is allowed
    cfg = ml_collections.ConfigDict(schema.upgrade(json.load(f)))   # an older run's config.json

``FIELDS`` is the one table; ``ADDED`` lists the fields added since the first runs were recorded,
each with the value that reproduces how runs behaved before it, and ``RENAMED`` the fields that
moved. Checks that need other packages (model sizes, policies, recipes, formats) are
``config_check``'s, which calls ``check`` first.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import ml_collections


class ConfigError(ValueError):
    """A config value that cannot train; the message is one line naming the field."""


@dataclasses.dataclass(frozen=True)
class Range:
    """``lo`` <= value (< where ``open_at`` is "low": value > lo) and value <= ``hi`` (< where
    ``open_at`` is "high"); ``hi`` None: no upper bound."""

    lo: float
    hi: float | None = None
    integer: bool = True
    open_at: str = ""


@dataclasses.dataclass(frozen=True)
class Field:
    path: str                 # dotted: "optim.lr"
    default: object
    doc: str                  # one line of markdown
    allowed: Range | tuple | None = None   # a range, or the choices of a string field


_INT1 = Range(1)
MODES = ("full", "lora", "qlora", "qat")
QAT_ESTIMATORS = ("ste", "dge")

# In the order of the docs table. Defaults are configs/lm.py's base variant (20m, bf16).
FIELDS: tuple[Field, ...] = (
    Field("imports", (), "user modules or `.py` files every process of the run imports first, so their formats, "
          "estimators and recipes are usable by name ([recipes](recipes.md)); "
          "`--config.imports=my_formats` or `'(\"a\", \"b.py\")'`; a relative `.py` path is resolved "
          "against the working directory when the run starts and recorded absolute"),
    Field("seed", 0, "initialization and data order"),
    Field("data_seed", -1, "the data order alone; -1: the same as `seed`"),
    Field("model.size", "20m", "`tiny`, `6m`, `20m`, `125m`, `350m`, `1b` (`lowprec/models/llama.py` `SIZES`)"),
    Field("model.vocab_size", 256, "token ids (bytes: 256; a BPE corpus: its vocabulary)"),
    Field("model.tie_embeddings", False, "LM head shares the embedding table (a quantized `lm_head` layer, logits "
          "scaled by d_model^-0.5)"),
    Field("model.arch", "", "JSON of LlamaConfig fields overriding `model.size`'s (`\"\"`: none); written from "
          "`finetune.init_from_hf`'s config.json (sizes, GQA, head width, rope_theta, rms_norm_eps)"),
    Field("model.remat", False, "recompute each layer in the backward pass"),
    Field("model.scan_unroll", 0, "layers per iteration of the layer scan; 0: all (no loop, the fastest step)",
          Range(0)),
    Field("model.attention", "", "`\"\"` (auto: cuDNN's fused kernel on GPUs, logged), `\"xla\"` or `\"cudnn\"`",
          ("", "xla", "cudnn")),
    Field("policy", "mixed_bf16", "precision policy, a name of `lp.optim.PRESETS` (`fp32`, `mixed_bf16`, "
          "`bf16_pure`, `bf16_master`, `bf16_sr`, `mixed_fp16`, `fp16_master`) or "
          "`\"param=..,compute=..,master=..,loss_scale=..\"`"),
    Field("recipe", "bf16", "every linear layer's recipe (a name or a call, [recipes](recipes.md))"),
    Field("recipe_rules", (("lm_head", "bf16"),), "(path regex, recipe) pairs, first match wins over `recipe`"),
    Field("execution", "", "how every layer's GEMMs compute their recipe's bits, never which bits: "
          "`\"native_fp8=..,fp8_transposes=..,kernel=..,block_amax=..\"` (`lp.ops.Execution`, "
          "[recipes](recipes.md#execution)); `\"\"`: each recipe's own fields"),
    Field("data.source", "pypi_v1", "`pypi_v1`, `debian_v1`, `default` (= `debian_v1`, earlier runs), `text`, "
          "`tokens`, `synthetic`"),
    Field("data.seq_len", 512, "tokens per sequence", _INT1),
    Field("data.batch_size", 64, "sequences per step (global)", _INT1),
    Field("data.path", "", "a prepared corpus directory, or files for `text` / `tokens`"),
    Field("data.tokenizer", "", "a Hugging Face `tokenizer.json`, or a directory holding one, that tokenizes "
          "`text` files (`\"\"`: bytes); `model.vocab_size` must hold its vocabulary"),
    Field("data.include", "", "sub-sources kept, comma-separated (`\"\"`: all), e.g. `shakespeare`"),
    Field("data.exclude", "", "sub-sources left out"),
    Field("finetune.init_from", "", "a run directory to start from (its latest checkpoint; optimizer fresh)"),
    Field("finetune.init_from_hf", "", "a Hugging Face Llama directory (config.json, safetensors) to start from; "
          "its config.json sets `model.vocab_size`, `model.tie_embeddings` and `model.arch`"),
    Field("finetune.mode", "full", "`full`, `lora`, `qlora` (adapters over a base stored in `base_format`), `qat`",
          MODES),
    Field("finetune.lora_rank", 8, "adapter rank"),
    Field("finetune.lora_alpha", 16.0, "adapter scale alpha / rank"),
    Field("finetune.lora_targets", "attn|mlp", "regex of layers that get adapters (or QAT)"),
    Field("finetune.lora_dropout", 0.0, "adapter dropout"),
    Field("finetune.base_format", "nf4_qlora", "QLoRA's stored base (`nf4_qlora`: bitsandbytes' NF4, bit for bit; "
          "`nf4`: lowprec's NF4, int8 linear double-quantized scales) / QAT's quantizer format (`nf4_qlora`: "
          "through `nf4`)"),
    Field("finetune.qat_estimator", "ste", "QAT's gradient: `ste` or `dge`", QAT_ESTIMATORS),
    Field("finetune.eval_quantized", "", "a format the targeted weights are rounded to for a last validation "
          "(`val_quantized`)"),
    Field("optim.lr", 1e-3, "AdamW peak learning rate", Range(0, integer=False, open_at="low")),
    Field("optim.warmup_steps", 200, "linear warmup, then cosine decay", Range(0)),
    Field("optim.min_lr_ratio", 0.1, "the decay's end, times `lr`", Range(0, 1, integer=False)),
    Field("optim.b1", 0.9, "Adam beta1 (first-moment decay)", Range(0, 1, integer=False, open_at="high")),
    Field("optim.b2", 0.95, "Adam beta2 (second-moment decay)", Range(0, 1, integer=False, open_at="high")),
    Field("optim.eps", 1e-8, "Adam epsilon", Range(0, integer=False, open_at="low")),
    Field("optim.weight_decay", 0.1, "decoupled weight decay", Range(0, integer=False)),
    Field("optim.clip_norm", 1.0, "global gradient-norm clip", Range(0, integer=False, open_at="low")),
    Field("optim.grad_accum", 1, "micro-batches per step", _INT1),
    Field("mesh.data", -1, "data-parallel mesh axis size; one of `mesh.data`, `mesh.fsdp`, `mesh.tensor` may be -1 "
          "(the rest)"),
    Field("mesh.fsdp", 1, "FSDP (parameter-sharding) mesh axis size"),
    Field("mesh.tensor", 1, "tensor-parallel mesh axis size"),
    Field("mesh.devices", -1, "how many devices to use (-1: all)"),
    Field("train.steps", 5000, "optimizer steps", _INT1),
    Field("train.log_every", 50, "steps between train records", _INT1),
    Field("train.eval_every", 500, "steps between validations", _INT1),
    Field("train.eval_batches", 20, "validation batches per evaluation (at least 1)", _INT1),
    Field("train.checkpoint_every", 500, "steps between checkpoints", _INT1),
    Field("train.keep_checkpoints", 3, "checkpoints kept", _INT1),
    Field("train.telemetry_every", 0, "steps between per-layer numerics records (0: none)", Range(0)),
    Field("train.progress", True, "a progress bar on the terminal"),
    Field("train.seeds_per_process", 1, "seeds `seed`.. `seed`+N-1 trained in one process as a vmapped axis (one "
          "device, from scratch), each in its own run directory `<workdir>/seed-<s>`", _INT1),
)

# Fields added after runs were recorded (oldest first), each with the value that reproduces how
# runs behaved before it: upgrade() fills them into an older config.json.
ADDED: tuple[tuple[str, object], ...] = (
    ("mesh.devices", -1),                     # every device, as before
    ("model.attention", ""),                  # jax's own choice of implementation, as before
    ("data.include", ""), ("data.exclude", ""),  # the whole corpus
    # No finetune block: a plain training run (mode full; the rest unused there).
    ("finetune.init_from", ""), ("finetune.mode", "full"), ("finetune.lora_rank", 8), ("finetune.lora_alpha", 16.0),
    ("finetune.lora_targets", "attn|mlp"), ("finetune.lora_dropout", 0.0), ("finetune.base_format", "nf4_qlora"),
    ("finetune.qat_estimator", "ste"), ("finetune.eval_quantized", ""),
    # The layers once ran in a loop of one per iteration; 0 (no loop) computes the same values
    # (tests/models/test_scan_unroll.py) and is what such a run reloads and resumes with.
    ("model.scan_unroll", 0),
    ("data_seed", -1),                        # the data order follows seed
    ("imports", []),
    ("model.arch", ""), ("data.tokenizer", ""), ("finetune.init_from_hf", ""),
    ("execution", ""),                        # each recipe's own fields, as before
    ("train.seeds_per_process", 1),           # one seed per process
)
# Fields that moved: {old dotted path: new dotted path}. None so far.
RENAMED: dict[str, str] = {}
# Keys of a run's config.json that are records, not fields (run_recipes.FIELD).
RECORDS = ("recipe_definitions",)


def defaults() -> ml_collections.ConfigDict:
    """Every run-config field at its default (configs/lm.py's base variant)."""
    tree: dict = {}
    for f in FIELDS:
        *blocks, key = f.path.split(".")
        node = tree
        for block in blocks:
            node = node.setdefault(block, {})
        node[key] = f.default
    return ml_collections.ConfigDict(tree)


def docs() -> dict[str, str]:
    """``{dotted path: one-line meaning}`` of every field, in the docs table's order."""
    return {f.path: f.doc for f in FIELDS}


def block_defaults(block: str) -> dict:
    """``{field: default}`` of one block (``"finetune"``)."""
    prefix = block + "."
    return {f.path[len(prefix):]: f.default for f in FIELDS if f.path.startswith(prefix)}


def upgrade(config: dict) -> dict:
    """A copy of an older config.json dict in today's shape: moved fields renamed (``RENAMED``),
    fields added since filled with their old meaning (``ADDED``); a current one is unchanged."""
    out = copy.deepcopy(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    for old, new in RENAMED.items():
        if _has(out, old):
            value = _pop(out, old)
            if not _has(out, new):
                _set(out, new, value)
    for path, value in ADDED:
        if not _has(out, path):
            _set(out, path, copy.deepcopy(value))
    return out


def check(cfg, device_count: int | None = None) -> None:
    """Raises ConfigError for the first field of ``cfg`` that is missing or unknown, out of its
    range or not one of its choices; ``data_seed``, ``optim.grad_accum`` (divides
    ``data.batch_size``) and ``mesh.devices`` (at most ``device_count``) are checked too."""
    _check_fields(cfg)
    for f in FIELDS:
        if isinstance(f.allowed, Range):
            _check_range(f.path, get(cfg, f.path), f.allowed)
        elif f.allowed is not None and get(cfg, f.path) not in f.allowed:
            known = ", ".join(c or '""' for c in f.allowed)
            raise ConfigError(f"unknown {f.path} {get(cfg, f.path)!r}; known: {known}")
    value = cfg.data_seed
    if not isinstance(value, int) or isinstance(value, bool) or value < -1:
        raise ConfigError(f"data_seed must be an integer >= 0, or -1 (the same as seed); got {value!r}")
    if cfg.data.batch_size % cfg.optim.grad_accum:
        raise ConfigError(f"optim.grad_accum={cfg.optim.grad_accum} must divide data.batch_size="
                          f"{cfg.data.batch_size}")
    devices = cfg.mesh.devices
    if not (isinstance(devices, int) and (devices == -1 or 1 <= devices <= (device_count or devices))):
        raise ConfigError(f"mesh.devices must be -1 (all) or 1 to {device_count or 'the device count'}; "
                          f"got {devices!r}")


def get(cfg, path: str):
    """The value at dotted ``path`` of a config or dict."""
    for part in path.split("."):
        cfg = cfg[part]
    return cfg


def leaf_paths(cfg, prefix: str = "") -> list[str]:
    """The dotted paths of every leaf of a (nested) config or dict."""
    out = []
    for key, value in cfg.items():
        if hasattr(value, "items"):
            out += leaf_paths(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def _check_fields(cfg) -> None:
    known = [f.path for f in FIELDS]
    have = [p for p in leaf_paths(cfg) if p.split(".")[0] not in RECORDS]
    unknown = [p for p in have if p not in known]
    if unknown:
        block = unknown[0].rpartition(".")[0]
        siblings = [p.rpartition(".")[2] for p in known if p.rpartition(".")[0] == block]
        raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; fields of {block or 'the config'}: "
                          f"{', '.join(sorted(siblings))}")
    missing = [p for p in known if p not in have]
    if missing:
        raise ConfigError(f"config field(s) {', '.join(missing)} missing (a config.json of an older version is "
                          "read through lowprec.train.schema.upgrade)")


def _check_range(field: str, value, r: Range) -> None:
    if r.hi is None:
        allowed = f"> {r.lo}" if r.open_at == "low" else f">= {r.lo}"
    else:
        allowed = f"in {'(' if r.open_at == 'low' else '['}{r.lo}, {r.hi}{')' if r.open_at == 'high' else ']'}"
    number = isinstance(value, int) if r.integer else isinstance(value, (int, float)) and math.isfinite(value)
    ok = number and not isinstance(value, bool) and (value > r.lo if r.open_at == "low" else value >= r.lo) and (
        r.hi is None or (value < r.hi if r.open_at == "high" else value <= r.hi))
    if not ok:
        raise ConfigError(f"{field} must be {'an integer' if r.integer else 'a number'} {allowed}; got {value!r}")


def _has(tree: dict, path: str) -> bool:
    *blocks, key = path.split(".")
    for block in blocks:
        tree = tree.get(block)
        if not isinstance(tree, dict):
            return False
    return key in tree


def _set(tree: dict, path: str, value) -> None:
    *blocks, key = path.split(".")
    for block in blocks:
        tree = tree.setdefault(block, {})
    tree[key] = value


def _pop(tree: dict, path: str):
    *blocks, key = path.split(".")
    for block in blocks:
        tree = tree[block]
    return tree.pop(key)
