"""FP4 ablations v2: the authors' own designs and the DGE question (issue 25), by sub-sweep ``arg``.

    python -m launch.sweep configs/fp4_ablation_v2.py:b --root runs/fp4_ablation_v2 --dry-run
    python -m launch.sweep configs/fp4_ablation_v2.py:all --root runs/fp4_ablation_v2
    python -m experiments.paired runs/fp4_ablation_v2 --baseline w4a8_wout_ste   # paired per seed

Every run is configs/precision.py's (the ~20M model, lr 1e-3, AdamW, 1500 steps of 64 x 512
tokens) on the current default corpus (``pypi_v1``, not v1's ``debian_v1``: v2's numbers are
compared with each other, never with v1's), seeds 0 and 1 (``seed`` sets initialization and
data order alike).

- ``ref``: bf16, the anchor.
- ``b`` (W4A8, the DGE question): weight scales per output channel (lowprec's, v1), per input
  channel (``tile(1,-1)``, the released code's grouping) and per tensor (the research branch's
  DGE ablation) x {STE, DGE k=5}; DGE with f' divided by its interval mean (0.594; a null test:
  AdamW predicts it equals plain DGE); STE and DGE (output channel) at lr 3e-3.
- ``c`` (W8A4, the research branch's OCC ablation): per-tensor activation scale *and* quantile,
  direct and with OCC alpha 0.999 / 0.99 / 0.97, residual fused into the activation.
- ``d`` (granularity, the research branch's design): direct-cast W4A4, no clamping, weights
  {tensor, channel} x activations {tensor, token}.
- ``e`` (activation element format): the full method (DGE k=5, OCC 0.99) with E2M1 weights and
  E2M1 or E1M2 activations.

The decision rule, fixed before the runs (experiments/results/fp4_ablation_v2/README.md):
a paired (same-seed) difference in final validation loss below 0.02 nats for both seeds is "no
effect"; an effect needs >= 0.03 nats, same sign, for both seeds; anything between is "unclear".
"""

from __future__ import annotations

import ml_collections

from configs import precision
from launch.sweep import axis, product, seeds
from lowprec.ops import recipes

SOURCE = "pypi_v1"
WEIGHT_SCALES = {"wout": "channel", "win": "tile(1,-1)", "wtensor": "tensor"}


def _register(name: str, recipe) -> str:
    recipes.register(name, recipe, overwrite=True)
    return name


def _w4a8(where: str, dge: bool, **kw) -> str:
    name = f"w4a8_{where}_{'dge5' if dge else 'ste'}" + ("_mean1" if kw.get("dge_mean_one") else "")
    return _register(name, recipes.fp4(4, 8, dge_k=5 if dge else None, weight_granularity=WEIGHT_SCALES[where],
                                       name=name, **kw))


def _w8a4(alpha: float | None) -> str:
    name = "w8a4_atensor" + ("" if alpha is None else f"_occ{str(alpha)[2:]}")
    return _register(name, recipes.fp4(8, 4, act_granularity="tensor", occ_alpha=alpha, occ_per="tensor",
                                       compensation="fused", name=name))


def _w4a4(w: str, a: str) -> str:
    name = f"w4a4_w{w}_a{a}"
    return _register(name, recipes.fp4(4, 4, weight_granularity=w, act_granularity=a, name=name))


def _element(e: str) -> str:
    name = f"fp4full_a{e[:4]}"
    return _register(name, recipes.fp4(dge_k=5, occ_alpha=0.99, act_element=e, name=name))


B = tuple(_w4a8(w, d) for w in WEIGHT_SCALES for d in (False, True)) + (_w4a8("wout", True, dge_mean_one=True),)
B_LR = (_w4a8("wout", False), _w4a8("wout", True))  # at LR_HIGH
LR_HIGH = 3e-3
SWEEPS = {
    "ref": ("bf16",),
    "b": B,
    "c": tuple(_w8a4(a) for a in (None, 0.999, 0.99, 0.97)),
    "d": tuple(_w4a4(w, a) for w in ("tensor", "channel") for a in ("tensor", "token")),
    "e": tuple(_element(e) for e in ("e2m1fn", "e1m2")),
}
ORDER = ("ref", "b", "b_lr", "c", "d", "e")  # "all", most decisive first


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg  # the sub-sweep only selects runs
    c = precision.get_config()
    c.data.source = SOURCE
    # GPU time: no telemetry passes (a group of seeds compiles one per seed) and one checkpoint, at
    # the end; validation every 250 steps as in v1.
    c.train.telemetry_every = 0
    c.train.checkpoint_every = precision.STEPS
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    parts = list(ORDER) if (arg or "all") == "all" else arg.split("+")
    unknown = [p for p in parts if p not in ORDER]
    if unknown:
        raise ValueError(f"unknown sub-sweep(s) {unknown}; known: {', '.join(ORDER)}, all, or b+c+...")
    runs = []
    for p in parts:
        if p == "b_lr":
            runs += product(axis("recipe", B_LR), axis("optim.lr", [LR_HIGH]), seeds(2))
        else:
            runs += product(axis("recipe", SWEEPS[p]), seeds(2))
    return runs
