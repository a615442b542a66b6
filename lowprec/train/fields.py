"""What each training config field means: the one source of ``--helpconfig`` and of the field
table of docs/training.md.

    python -m experiments.train --config configs/lm.py:smoke --helpconfig   # a variant's values
    python -m lowprec.train.fields configs/lm.py                            # the docs table
    python -m lowprec.train.fields configs/lm.py --write docs/training.md   # ... written there

``FIELDS`` maps every leaf of ``configs/lm.py``'s config (dotted path) to a one-line meaning.
The table's "default" column is the base variant's value, with the variants that change it
noted (``512 (`cpu` 128, `smoke` 64)``), except where ``DEFAULT_TEXT`` says it in words.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections.abc import Iterator, Mapping

FIELDS: dict[str, str] = {
    "imports": "user modules or `.py` files every process of the run imports first, so their formats, "
               "estimators and recipes are usable by name ([recipes](recipes.md)); "
               "`--config.imports=my_formats` or `'(\"a\", \"b.py\")'`; a relative `.py` path is resolved "
               "against the working directory when the run starts and recorded absolute",
    "seed": "initialization and data order",
    "data_seed": "the data order alone; -1: the same as `seed`",
    "model.size": "`tiny`, `6m`, `20m`, `125m`, `350m`, `1b` (`lowprec/models/llama.py` `SIZES`)",
    "model.vocab_size": "token ids (bytes: 256; a BPE corpus: its vocabulary)",
    "model.tie_embeddings": "LM head shares the embedding table (a quantized `lm_head` layer, logits scaled "
                            "by d_model^-0.5)",
    "model.arch": "JSON of LlamaConfig fields overriding `model.size`'s (`\"\"`: none); written from "
                  "`finetune.init_from_hf`'s config.json (sizes, GQA, head width, rope_theta, rms_norm_eps)",
    "model.remat": "recompute each layer in the backward pass",
    "model.scan_unroll": "layers per iteration of the layer scan; 0: all (no loop, the fastest step)",
    "model.attention": "`\"\"` (auto: cuDNN's fused kernel on GPUs, logged), `\"xla\"` or `\"cudnn\"`",
    "policy": "precision policy, a name of `lp.optim.PRESETS` (`fp32`, `mixed_bf16`, `bf16_pure`, "
              "`bf16_master`, `bf16_sr`, `mixed_fp16`, `fp16_master`) or "
              "`\"param=..,compute=..,master=..,loss_scale=..\"`",
    "recipe": "every linear layer's recipe (a name or a call, [recipes](recipes.md))",
    "recipe_rules": "(path regex, recipe) pairs, first match wins over `recipe`",
    "data.source": "`pypi_v1`, `debian_v1`, `default` (= `debian_v1`, earlier runs), `text`, `tokens`, "
                   "`synthetic`",
    "data.seq_len": "tokens per sequence",
    "data.batch_size": "sequences per step (global)",
    "data.path": "a prepared corpus directory, or files for `text` / `tokens`",
    "data.tokenizer": "a Hugging Face `tokenizer.json`, or a directory holding one, that tokenizes "
                      "`text` files (`\"\"`: bytes); `model.vocab_size` must hold its vocabulary",
    "data.include": "sub-sources kept, comma-separated (`\"\"`: all), e.g. `shakespeare`",
    "data.exclude": "sub-sources left out",
    "finetune.init_from": "a run directory to start from (its latest checkpoint; optimizer fresh)",
    "finetune.init_from_hf": "a Hugging Face Llama directory (config.json, safetensors) to start from; "
                             "its config.json sets `model.vocab_size`, `model.tie_embeddings` and `model.arch`",
    "finetune.mode": "`full`, `lora`, `qlora` (adapters over a base stored in `base_format`), `qat`",
    "finetune.lora_rank": "adapter rank",
    "finetune.lora_alpha": "adapter scale alpha / rank",
    "finetune.lora_targets": "regex of layers that get adapters (or QAT)",
    "finetune.lora_dropout": "adapter dropout",
    "finetune.base_format": "QLoRA's stored base (`nf4_qlora`: bitsandbytes' NF4, bit for bit; `nf4`: lowprec's "
                            "NF4, int8 linear double-quantized scales) / QAT's quantizer format (`nf4_qlora`: "
                            "through `nf4`)",
    "finetune.qat_estimator": "QAT's gradient: `ste` or `dge`",
    "finetune.eval_quantized": "a format the targeted weights are rounded to for a last validation "
                               "(`val_quantized`)",
    "optim.lr": "AdamW peak learning rate",
    "optim.warmup_steps": "linear warmup, then cosine decay",
    "optim.min_lr_ratio": "the decay's end, times `lr`",
    "optim.b1": "Adam beta1 (first-moment decay)",
    "optim.b2": "Adam beta2 (second-moment decay)",
    "optim.eps": "Adam epsilon",
    "optim.weight_decay": "decoupled weight decay",
    "optim.clip_norm": "global gradient-norm clip",
    "optim.grad_accum": "micro-batches per step",
    "mesh.data": "data-parallel mesh axis size; one of `mesh.data`, `mesh.fsdp`, `mesh.tensor` may be -1 "
                 "(the rest)",
    "mesh.fsdp": "FSDP (parameter-sharding) mesh axis size",
    "mesh.tensor": "tensor-parallel mesh axis size",
    "mesh.devices": "how many devices to use (-1: all)",
    "train.steps": "optimizer steps",
    "train.log_every": "steps between train records",
    "train.eval_every": "steps between validations",
    "train.eval_batches": "validation batches per evaluation (at least 1)",
    "train.checkpoint_every": "steps between checkpoints",
    "train.keep_checkpoints": "checkpoints kept",
    "train.telemetry_every": "steps between per-layer numerics records (0: none)",
    "train.progress": "a progress bar on the terminal",
    "train.seeds_per_process": "seeds `seed`.. `seed`+N-1 trained in one process as a vmapped axis (one device, "
                               "from scratch), each in its own run directory `<workdir>/seed-<s>`",
}

# The docs table's default where the variants' values do not say it.
DEFAULT_TEXT: dict[str, str] = {
    "model.size": "from the variant",
    "recipe": "from the variant, else `bf16`",
}

BASE_VARIANT = "20m"  # configs/lm.py's default: the table's default column
VARIANTS = ("cpu", "smoke")  # noted where they change a default
HEADER = "| field | default | meaning |"


def leaves(cfg, prefix: str = "") -> Iterator[tuple[str, object]]:
    """``(dotted path, value)`` of every leaf of a (nested) config, in its order (a
    ``ConfigDict``'s is alphabetical)."""
    for key, value in cfg.items():
        if isinstance(value, Mapping) or hasattr(value, "items"):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def value_text(value) -> str:
    """A config value as the docs table writes it: numbers and booleans plain, strings and
    sequences in backticks (``1e-3``, `` `mixed_bf16` ``, `` `""` ``, `` `()` ``)."""
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value and abs(value) < 1e-2:
            mantissa, exponent = f"{value:.0e}".split("e")
            return f"{mantissa}e{int(exponent)}"
        return repr(value)
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, (tuple, list)):
        return f"`{_python(value)}`"
    return f"`{value}`"


def _python(value) -> str:
    """A sequence as Python source with double-quoted strings: ``(("lm_head", "bf16"),)``."""
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_python(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def default_text(path: str, base: dict, variants: Mapping[str, dict]) -> str:
    """``path``'s default: ``DEFAULT_TEXT``'s words, else the base value with the variants that
    differ (those with one value grouped: ``1e-3 (`cpu`, `smoke` 3e-3)``)."""
    if path in DEFAULT_TEXT:
        return DEFAULT_TEXT[path]
    groups: dict[str, list[str]] = {}
    for name, flat in variants.items():
        if flat[path] != base[path]:
            groups.setdefault(value_text(flat[path]), []).append(f"`{name}`")
    notes = ", ".join(f"{', '.join(names)} {text}" for text, names in groups.items())
    return value_text(base[path]) + (f" ({notes})" if notes else "")


def markdown_table(base_cfg, variant_cfgs: Mapping[str, object] | None = None) -> str:
    """The docs table: one row per leaf of ``base_cfg``, its default (``variant_cfgs`` noted where
    they differ) and its meaning. A leaf that ``FIELDS`` lacks is a ``KeyError`` naming it."""
    base = dict(leaves(base_cfg))
    variants = {name: dict(leaves(c)) for name, c in (variant_cfgs or {}).items()}
    missing = [p for p in base if p not in FIELDS]
    if missing:
        raise KeyError(f"lowprec.train.fields.FIELDS lacks config fields: {', '.join(missing)}")
    rows = [HEADER, "|---|---|---|"]
    for path in sorted(base, key=list(FIELDS).index):  # FIELDS' order (a config's items are sorted)
        cells = [f"`{path}`", default_text(path, base, variants), FIELDS[path]]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def help_text(cfg, title: str = "") -> str:
    """Every leaf of ``cfg`` with its value and meaning, one a line (``--helpconfig``)."""
    order = {p: i for i, p in enumerate(FIELDS)}
    items = sorted(leaves(cfg), key=lambda item: order.get(item[0], len(order)))
    width = max((len(p) for p, _ in items), default=0)
    values = [repr(v) for _, v in items]
    vwidth = min(max((len(v) for v in values), default=0), 24)
    lines = [title] if title else []
    for (path, _), value in zip(items, values):
        meaning = _plain(FIELDS.get(path, "(not described in lowprec.train.fields)"))
        lines.append(f"  {path:<{width}}  {value:<{vwidth}}  {meaning}")
    return "\n".join(lines)


def _plain(markdown: str) -> str:
    """A meaning without markdown: backticks dropped, ``[text](link)`` as ``text``."""
    return re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", markdown).replace("`", "")


def load_config_file(path: str, variant: str | None = None):
    """``get_config(variant)`` of the config file at ``path``."""
    spec = importlib.util.spec_from_file_location("_fields_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def table_of(path: str) -> str:
    """``markdown_table`` of the config file at ``path``: ``BASE_VARIANT``, ``VARIANTS`` noted."""
    return markdown_table(load_config_file(path, BASE_VARIANT),
                          {v: load_config_file(path, v) for v in VARIANTS})


def _span(lines: list[str]) -> tuple[int, int]:
    """The first and past-the-last line of the table that starts at ``HEADER``."""
    if HEADER not in lines:
        raise ValueError(f"no table starting with {HEADER!r}")
    start = end = lines.index(HEADER)
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return start, end


def table_in(text: str) -> str:
    """The table of ``text`` (markdown) that starts at ``HEADER``."""
    lines = text.split("\n")
    start, end = _span(lines)
    return "\n".join(lines[start:end])


def replace_table(text: str, table: str) -> str:
    """``text`` (markdown) with the table that starts at ``HEADER`` replaced by ``table``."""
    lines = text.split("\n")
    start, end = _span(lines)
    return "\n".join([*lines[:start], table, *lines[end:]])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Print (or --write) the config field table of docs/training.md.")
    parser.add_argument("config", help="the config file, e.g. configs/lm.py")
    parser.add_argument("--write", default="", help="replace the field table of this markdown file")
    args = parser.parse_args(argv)
    table = table_of(args.config)
    if not args.write:
        print(table)
        return 0
    with open(args.write) as f:
        text = f.read()
    with open(args.write, "w") as f:
        f.write(replace_table(text, table))
    print(f"wrote the field table of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
