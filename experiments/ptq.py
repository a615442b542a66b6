"""Post-training quantization of trained runs: held-out loss before and after, sizes, per-layer SQNR.

    python -m experiments.ptq --checkpoint runs/20m --weights int4 --method gptq
    python -m experiments.ptq --checkpoint runs/20m --weights int4 --activations int8 --act-calibration mse
    python -m experiments.ptq --config configs/ptq.py --out experiments/results/ptq    # formats x sizes
    python -m experiments.ptq --hf models/llama --data 'text:notes/*.md' --weights nf4 --method gptq \
        --export out/    # a Hugging Face checkpoint; text tokenized with its tokenizer.json

Each setting quantizes the run's attention and MLP weights (``--weights``: ``int8``, ``int4``,
``int4:block(64)``, ``nf4``, ``mxfp4``, ``nvfp4``, ``e4m3fn``, ...) by round-to-nearest or GPTQ,
optionally their inputs (``--activations``) with scales calibrated on training batches, and
measures the held-out loss of the run's own validation split; it saves the quantized model with
orbax to measure its size on disk beside the bf16 checkpoint's. ``--out`` writes
``results.json``, ``report.md`` and figures.

``--hf PATH`` quantizes a Hugging Face Llama checkpoint (``models.load_hf``) instead of a run:
its calibration and held-out text come from ``--data SOURCE[:PATH]`` (``text:`` files tokenized
with ``PATH/tokenizer.json`` or ``--tokenizer``; ``tokens:`` a file of the model's token ids; a
prepared corpus), split by document as a run's corpus is. ``--export DIR`` writes each
weight-only setting's model as packed codes and scales (``models.hf_packed``, docs/ptq.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from experiments.common import cli_logging, environment
from launch.sweep import apply_overrides, load_sweep
from lowprec import data as lpdata
from lowprec import ptq
from lowprec.models import hf as hf_models
from lowprec.models import hf_packed
from lowprec.nn import assign_recipes
from lowprec.train import loop, restore, run_recipes

log = logging.getLogger("ptq")
SPEC_FIELDS = ("weights", "method", "targets", "activations", "act_calibration", "percentile", "damp")


def _batches(run, calib_batches: int, eval_batches: int):
    """(calibration token arrays from the training split, held-out (tokens, valid) batches)."""
    d = run.cfg.data
    corpus = loop.load_corpus(run.cfg)
    check_vocab(run, corpus)
    train, val = corpus.split()
    batches = lpdata.Batches(train, seq_len=d.seq_len, batch_size=d.batch_size, seed=run.cfg.seed + 7)
    calib = [batches.batch(i) for i in range(calib_batches)]
    evals = lpdata.EvalBatches(val, seq_len=d.seq_len, batch_size=d.batch_size, max_batches=eval_batches)
    return calib, [evals.batch(i) for i in range(len(evals))], corpus.bytes_per_token


class HFRun:
    """A Hugging Face checkpoint loaded as a run: ``model`` (bf16 compute, the ``recipe`` on every
    layer), ``params``, ``step`` (0) and a ``cfg`` holding its data block (``data_config``)."""

    def __init__(self, path: str, data: ml_collections.ConfigDict, recipe: str = "bf16"):
        self.model = hf_models.load_hf(path, dtype="bfloat16")
        assign_recipes(self.model, [(".*", recipe)])
        self.params = nnx.state(self.model, nnx.Param)
        self.step = 0
        self.cfg = ml_collections.ConfigDict({
            "model": {"size": os.path.basename(os.path.normpath(path)), "vocab_size": self.model.cfg.vocab_size},
            "recipe": recipe, "recipe_rules": (), "seed": 0, "data": data,
            "train": {"eval_batches": data.get("eval_batches", 20)}})


def add_hf_arguments(parser, hf_help: str, tokens: str) -> None:
    """``--hf`` and the flags that say which tokens its checkpoint is run on (ptq and evaluate)."""
    parser.add_argument("--hf", default="", help=hf_help)
    parser.add_argument("--data", default="", help=f"with --hf: SOURCE[:PATH] of the {tokens}, e.g. "
                        "'text:notes/*.md' (tokenized with --tokenizer), 'tokens:ids.bin', pypi_v1")
    parser.add_argument("--tokenizer", default="", help="with --hf --data text:...: a tokenizer.json "
                        "(default: the checkpoint's)")
    parser.add_argument("--seq-len", dest="seq_len", type=int, default=128, help="with --hf: tokens per sequence")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=8, help="with --hf: sequences per batch")


def data_config(hf_path: str, data: str, tokenizer: str = "", seq_len: int = 128, batch_size: int = 8,
                eval_batches: int = 20) -> ml_collections.ConfigDict:
    """The data block of a Hugging Face checkpoint's evaluation: ``data`` is ``SOURCE[:PATH]``
    (``text:notes/*.md``, ``tokens:ids.bin``, ``pypi_v1``); text is tokenized with ``tokenizer``
    (default: ``hf_path/tokenizer.json``). Raises ValueError (one line) when there is none to use."""
    if not data:
        raise ValueError(f"--hf {hf_path}: give --data SOURCE[:PATH] for calibration and held-out text, e.g. "
                         f"--data 'text:notes/*.md' (tokenized with {os.path.join(hf_path, 'tokenizer.json')})")
    source, _, path = data.partition(":")
    if source not in lpdata.source_names():
        raise ValueError(f"--data {data!r}: unknown source {source!r}; known: {', '.join(lpdata.source_names())}")
    if source == "text":
        tokenizer = tokenizer or os.path.join(hf_path, "tokenizer.json")
        if not os.path.isfile(tokenizer):
            raise ValueError(f"--data {data!r}: {tokenizer} not found to tokenize the text as the model expects; give "
                             "--tokenizer FILE, or --data tokens:FILE (the model's token ids)")
    elif tokenizer:
        raise ValueError(f"--tokenizer tokenizes text: it needs --data text:PATH, not {data!r}")
    return ml_collections.ConfigDict({"source": source, "path": path, "tokenizer": tokenizer if source == "text" else "",
                                      "include": "", "exclude": "", "seq_len": seq_len, "batch_size": batch_size,
                                      "eval_batches": eval_batches})


def check_vocab(run, corpus) -> None:
    if corpus.vocab_size > run.model.cfg.vocab_size:
        raise ValueError(f"the data's vocabulary ({corpus.vocab_size} tokens) exceeds the model's vocab_size "
                         f"{run.model.cfg.vocab_size}: tokenize with the model's tokenizer")


class Checkpoint:
    """A run (or, with ``data``, a Hugging Face checkpoint) loaded once: its model, data, loss and bf16 size."""

    def __init__(self, path: str, calib_batches: int, eval_batches: int, data=None):
        if data is None:
            run_recipes.check_run(path, restore.read_config(path))
        self.path, self.run = path, (restore.load_run(path) if data is None else HFRun(path, data))
        self.model = self.run.model
        self.calib, self.evals, self.bytes_per_token = _batches(self.run, calib_batches, eval_batches)
        self.before = ptq.loss(self.model, self.evals, self.bytes_per_token)
        self.bf16 = {"memory_bytes": ptq.memory_bytes(self.model)["total_bytes"], "disk_bytes": _disk(self.model)}
        self.params = int(sum(x.size for x in jax.tree.leaves(self.run.params)))
        log.info("%s: %s at step %d, %.1fM parameters, held-out loss %.4f", path, self.run.cfg.model.size,
                 self.run.step, self.params / 1e6, self.before["loss"])


def _disk(model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return ptq.save(model, os.path.join(tmp, "model"))


def _mean(values):
    flat = [v for x in values for v in (x if isinstance(x, list) else [x])]
    return float(np.mean(flat)) if flat else None


def evaluate(ck: Checkpoint, spec: ptq.Spec, save_dir: str | None = None, export: str | None = None) -> dict:
    qmodel, layers = ptq.quantize_model(ck.model, spec, ck.calib)
    if export:
        hf_packed.save_packed(qmodel, export, spec.weights)
        log.info("exported %s (packed codes and scales)", export)
    after = ptq.loss(qmodel, ck.evals, ck.bytes_per_token)
    memory = ptq.memory_bytes(qmodel)
    if save_dir:
        disk = ptq.save(qmodel, save_dir)
    else:
        disk = _disk(qmodel)
    targeted = sum(v["weights"] for v in layers.values())
    row = {"checkpoint": ck.path, "size": ck.run.cfg.model.size, "params": ck.params, "step": ck.run.step,
           **{f: getattr(spec, f) for f in SPEC_FIELDS}, "setting": str(spec),
           "loss_before": ck.before["loss"], "loss_after": after["loss"], "loss_increase": after["loss"] - ck.before["loss"],
           "bits_per_byte_before": ck.before["bits_per_byte"], "bits_per_byte_after": after["bits_per_byte"],
           "memory_bytes": memory["total_bytes"], "disk_bytes": disk, "bf16_memory_bytes": ck.bf16["memory_bytes"],
           "bf16_disk_bytes": ck.bf16["disk_bytes"], "quantized_weights": targeted,
           "bits_per_weight": 8 * memory["quantized_bytes"] / max(targeted, 1),
           "weight_sqnr_db": _mean(v["weight_sqnr_db"] for v in layers.values()),
           "output_sqnr_db": _mean(v.get("output_sqnr_db", []) for v in layers.values()), "layers": layers}
    log.info("%s %s: loss %.4f -> %.4f (%+.4f), %.2f bits/weight, %.1f%% of bf16 on disk", ck.run.cfg.model.size,
             spec, ck.before["loss"], after["loss"], row["loss_increase"], row["bits_per_weight"],
             100 * disk / ck.bf16["disk_bytes"])
    return row


def settings_from(args) -> list[ml_collections.ConfigDict]:
    if args.config:
        module, arg = load_sweep(args.config)
        base = module.get_config(arg)
        sweep = module.get_sweep(arg) if hasattr(module, "get_sweep") else [{}]
        return [apply_overrides(base, o) for o in sweep]
    if bool(args.checkpoint) == bool(args.hf):
        raise SystemExit("give --config configs/ptq.py[:sizes], --checkpoint <run dir> or --hf <Hugging Face dir>")
    data = {}
    if args.hf:
        data = {"data": data_config(args.hf, args.data, args.tokenizer, args.seq_len, args.batch_size).to_dict()}
    c = ml_collections.ConfigDict({"checkpoint": args.checkpoint or args.hf, **data, "calib_batches": args.calib_batches,
                                   "eval_batches": args.eval_batches,
                                   **{f: getattr(args, f) for f in SPEC_FIELDS}})
    return [c]


def read_results(out: str) -> dict:
    """What an earlier (possibly interrupted) call wrote to ``out/results.json`` ({} if nothing)."""
    path = os.path.join(out, "results.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def read_rows(out: str) -> list[dict]:
    """The rows an earlier (possibly interrupted) call wrote to ``out/results.json``."""
    return read_results(out).get("rows", [])


def run(settings, out: str | None = None, save: str | None = None, export: str | None = None) -> list[dict]:
    """Evaluate every setting; with ``out``, settings already in its results.json are kept, not redone."""
    loaded: dict[str, Checkpoint] = {}
    rows = read_rows(out) if out else []
    done = {(r["checkpoint"], r["setting"]) for r in rows}
    for i, s in enumerate(settings):
        spec = ptq.Spec(**{f: s[f] for f in SPEC_FIELDS})
        if (s.checkpoint, str(spec)) in done:
            print(f"[{i + 1}/{len(settings)}] {s.checkpoint}: {spec} (in {out}/results.json)", flush=True)
            continue
        if s.checkpoint not in loaded:
            loaded.clear()  # one model in memory at a time
            data = ml_collections.ConfigDict(s.data) if "data" in s else None
            loaded[s.checkpoint] = Checkpoint(s.checkpoint, s.calib_batches, s.eval_batches, data)
        print(f"[{i + 1}/{len(settings)}] {s.checkpoint}: {spec}", flush=True)
        save_dir = os.path.abspath(os.path.join(save, f"{os.path.basename(s.checkpoint)}-{i:03d}")) if save else None
        export_file = None
        if export:
            os.makedirs(export, exist_ok=True)
            export_file = os.path.join(export, f"{os.path.basename(os.path.normpath(s.checkpoint))}-{i:03d}.packed.safetensors")
        rows.append(evaluate(loaded[s.checkpoint], spec, save_dir, export_file))
        if export_file:
            rows[-1]["export"] = export_file
        if out:  # nothing lost if interrupted
            _write_json(out, rows)
    return rows


def _write_json(out: str, rows: list[dict], sources: list[dict] | None = None) -> None:
    os.makedirs(out, exist_ok=True)
    payload = {"environment": environment(), "rows": rows}
    if sources:  # a merge: where each part was measured
        payload["sources"] = sources
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(payload, f, indent=1)


def merge(dirs: list[str], out: str) -> list[dict]:
    """One results.json and report from several calls' directories (later rows of a setting win)."""
    if not out:
        raise SystemExit("error: --merge needs --out")
    rows: dict[tuple, dict] = {}
    sources = []
    for d in dirs:
        saved = read_results(d)
        found = saved.get("rows")
        if not found:
            raise SystemExit(f"error: no results.json with rows in {d}")
        rows.update({(r["checkpoint"], r["setting"]): r for r in found})
        sources.append({"directory": d, "settings": len(found), "environment": saved["environment"]})
    merged = list(rows.values())
    _write_json(out, merged, sources)
    from experiments.reporting.ptq import write_report
    write_report(out, merged)
    print(f"merged {len(merged)} settings from {len(dirs)} directories into {out}/report.md")
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="", help="configs/ptq.py[:sizes]: every setting of its sweep")
    parser.add_argument("--checkpoint", default="", help="a trained run directory (one setting from the flags)")
    add_hf_arguments(parser, "a Hugging Face Llama directory (config.json, safetensors) instead",
                     "calibration and held-out tokens")
    parser.add_argument("--export", default="", help="write each weight-only setting's model here as packed codes "
                        "and scales (<name>-<i>.packed.safetensors; layout: docs/ptq.md)")
    parser.add_argument("--weights", default="int4", help="weight format: int8, int4, int4:block(64), nf4, mxfp4, ...")
    parser.add_argument("--method", default="rtn", choices=ptq.METHODS)
    parser.add_argument("--targets", default="attn|mlp", help="regular expression over layer paths")
    parser.add_argument("--activations", default="", help="input format of the targeted layers (int8, e4m3fn, ...)")
    parser.add_argument("--act-calibration", dest="act_calibration", default="absmax",
                        help="absmax, percentile, mse or dynamic")
    parser.add_argument("--percentile", type=float, default=99.99)
    parser.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening (fraction of mean diag H)")
    parser.add_argument("--calib-batches", dest="calib_batches", type=int, default=4)
    parser.add_argument("--eval-batches", dest="eval_batches", type=int, default=20)
    parser.add_argument("--out", default="", help="directory for results.json, report.md and figures")
    parser.add_argument("--save", default="", help="keep the quantized models (orbax) under this directory")
    parser.add_argument("--merge", nargs="+", default=[], metavar="DIR",
                        help="no quantization: merge the results.json of these directories into --out's report")
    args = parser.parse_args(argv)
    cli_logging()
    if args.merge:
        return merge(args.merge, args.out)
    try:
        settings = settings_from(args)
        for path in dict.fromkeys(s.checkpoint for s in settings if "data" not in s):  # config.imports first: the
            restore.read_config(path)  # formats those modules register are known to the specs below
        for s in settings:  # every bad field before any work
            ptq.Spec(**{f: s[f] for f in SPEC_FIELDS})
    except (ValueError, FileNotFoundError) as e:  # a ConfigError of config.imports too
        raise SystemExit(f"error: {e}") from None
    try:
        rows = run(settings, args.out or None, args.save or None, args.export or None)
    except run_recipes.UnknownRunRecipe as e:
        raise SystemExit(f"error: {e}") from None
    from experiments.reporting.ptq import table, write_report
    print(table(rows))
    if args.out:
        write_report(args.out, rows)
        print(f"wrote {args.out}/report.md")


if __name__ == "__main__":
    jnp.zeros(())  # initialize the backend before absl/orbax logging
    main()
