"""The run config's ``finetune`` block and what each of its modes changes in a model.

The block's fields and defaults (``DEFAULTS``, from ``schema``), its check
(``check``: one line naming the field and its allowed values), and the construction each mode
asks of a freshly built model: qat mode's recipe rule (``qat_rules``), lora/qlora modes'
adapters (``adapt``) and the split of trainable from frozen variables (``split``). Nothing
here reads another run: starting from ``init_from`` and loading a fine-tuned run back are
``finetune``'s, which sits above ``build`` (the chain is described in ``lowprec.train``).
"""

from __future__ import annotations

import logging
import re

from flax import nnx

from lowprec.nn import lora, packed
from lowprec.ops import Recipe
from lowprec.quant import get_estimator
from lowprec.train import schema

log = logging.getLogger(__name__)

MODES = schema.MODES
ADAPTER_MODES = ("lora", "qlora")
QAT_ESTIMATORS = schema.QAT_ESTIMATORS
DEFAULTS = schema.block_defaults("finetune")


def check(cfg) -> None:
    """Raises ValueError naming the field and its allowed values for a bad ``finetune`` block."""
    ft = cfg.finetune
    unknown = sorted(set(ft.keys()) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown finetune field(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    if ft.mode not in MODES:
        raise ValueError(f"unknown finetune.mode {ft.mode!r}; known: {', '.join(MODES)}")
    if ft.qat_estimator not in QAT_ESTIMATORS:
        raise ValueError(f"unknown finetune.qat_estimator {ft.qat_estimator!r}; known: {', '.join(QAT_ESTIMATORS)}")
    try:
        re.compile(ft.lora_targets)
    except re.error as e:
        raise ValueError(f"finetune.lora_targets {ft.lora_targets!r} is not a regular expression: {e}") from None
    if ft.mode in ("qlora", "qat"):
        _quantizer("finetune.base_format", ft.base_format)
    if ft.eval_quantized:
        _quantizer("finetune.eval_quantized", ft.eval_quantized)
    if ft.mode in ADAPTER_MODES:
        try:
            lora.check_hyperparameters(ft.lora_rank, ft.lora_alpha, ft.lora_dropout)
        except ValueError as e:
            raise ValueError(f"finetune.lora_rank/lora_alpha/lora_dropout: {e}") from None
        if cfg.train.telemetry_every:
            raise ValueError(f"train.telemetry_every={cfg.train.telemetry_every} needs finetune.mode full or qat "
                             f"(the telemetry twin has no adapters); got mode {ft.mode!r}: set it to 0")


def _quantizer(field: str, spec: str):
    try:
        return packed.weight_quantizer(spec)
    except ValueError as e:
        raise ValueError(f"{field}: {e}") from None


def weight_only_recipe(spec: str, estimator: str = "ste") -> Recipe:
    """GEMMs in the model's compute dtype whose weight operand is rounded by
    ``weight_quantizer(spec)`` (gradient: ``estimator``); the backward reuses the rounded
    weight, as the forward saw it; activations and gradients stay unquantized."""
    spec = "nf4" if spec == "nf4_qlora" else spec  # a stored format with no fake quantizer: lowprec's NF4
    q = packed.weight_quantizer(spec).replace(estimator=get_estimator(estimator))
    return Recipe(fwd_weight=q, reuse_forward=True, name=f"weights:{spec}+{estimator}")


def qat_rules(cfg) -> list[tuple[str, Recipe]]:
    """The recipe rule that puts the targeted layers' weights through the quantizer (qat mode)."""
    ft = cfg.finetune
    if ft.mode != "qat":
        return []
    return [(ft.lora_targets, weight_only_recipe(ft.base_format, ft.qat_estimator))]


def trainable_filter(cfg):
    return lora.LoRAParam if cfg.finetune.mode in ADAPTER_MODES else nnx.Param


def adapt(cfg, model: nnx.Module) -> dict:
    """Adds the adapters of lora/qlora modes to ``model`` in place; ``{path: (in, out)}``."""
    ft = cfg.finetune
    if ft.mode not in ADAPTER_MODES:
        return {}
    if not ft.init_from and not ft.init_from_hf:
        log.warning("finetune.mode=%s without finetune.init_from: adapters on a randomly initialized base", ft.mode)
    return lora.apply_lora(model, ft.lora_targets, ft.lora_rank, ft.lora_alpha, dropout=ft.lora_dropout,
                           base=ft.base_format if ft.mode == "qlora" else None, rngs=nnx.Rngs(cfg.seed + 3))


def split(cfg, model: nnx.Module):
    """(graphdef, eval graphdef, trainable, frozen or None, rest): adapters vs the rest in
    lora/qlora modes, every Param in full/qat modes; the eval graph has LoRA dropout off."""
    trainable = trainable_filter(cfg)
    if trainable is nnx.Param:
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        return graphdef, graphdef, params, None, rest
    graphdef, params, frozen, rest = nnx.split(model, trainable, nnx.Any(nnx.Param, packed.QuantizedWeight), ...)
    lora.set_deterministic(model, True)
    eval_graphdef = nnx.graphdef(model)
    lora.set_deterministic(model, False)
    return graphdef, eval_graphdef, params, frozen, rest
