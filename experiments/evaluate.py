"""Evaluate a trained run: its held-out loss with the recipe it trained with, and with others.

    python -m experiments.evaluate runs/20m-bf16                                  # as trained
    python -m experiments.evaluate runs/20m-bf16 --recipe fp8 --recipe fp4_paper  # + inference in these
    python -m experiments.evaluate runs/20m-bf16 --step 1000 --batches 32 --out eval.json
    python -m experiments.evaluate --hf models/llama --data 'text:notes/*.md' --recipe fp8   # a HF checkpoint

Loads the run's checkpoint (``--step``, default the latest) and measures the mean next-token
loss, perplexity and bits per byte on its own validation split (the data, sequence length and
batch size of its config; ``--batches`` held-out batches, default the run's
``train.eval_batches``). Each ``--recipe`` re-evaluates the same weights with that recipe on
every layer the run's recipe rules do not pin (the LM head stays as trained): what serving the
model in another format would cost, with no calibration; a recipe the run's ``config.imports``
modules define is known by name here (they are imported before ``--recipe`` is checked). ``--out`` writes the rows as JSON with
the command, device, date and package versions.

``--hf PATH`` evaluates a Hugging Face Llama checkpoint instead (loaded with ``models.load_hf``,
bf16 compute; "as trained" is its bf16 row) on the held-out split of ``--data SOURCE[:PATH]``,
text tokenized with ``PATH/tokenizer.json`` or ``--tokenizer`` (as ``experiments.ptq --hf``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from tqdm.auto import tqdm

from experiments.common import cli_logging, environment, write_json
from experiments.ptq import HFRun, add_hf_arguments, check_vocab, data_config
from lowprec import data as lpdata
from lowprec import nn as lpnn
from lowprec import ptq
from lowprec.ops import recipes
from lowprec.train import loop, restore, run_recipes
from lowprec.train.config_check import ConfigError

log = logging.getLogger("evaluate")


def held_out(run, batches: int | None) -> tuple[list, float]:
    """The run's validation batches ``(tokens, valid)`` and its corpus's bytes per token."""
    d = run.cfg.data
    corpus = loop.load_corpus(run.cfg)
    check_vocab(run, corpus)
    _, val = corpus.split()
    n = run.cfg.train.eval_batches if batches is None else batches
    evals = lpdata.EvalBatches(val, seq_len=d.seq_len, batch_size=d.batch_size, max_batches=n)
    return [evals.batch(i) for i in range(len(evals))], corpus.bytes_per_token


def evaluate(run, recipe_names: list[str], batches: list, bytes_per_token: float, progress: bool = True) -> list[dict]:
    """One row per recipe: ``None`` is the run's own; others replace its default recipe."""
    rows = []
    for name in recipe_names:
        model = run.model
        if name is not None:
            lpnn.assign_recipes(model, [*run_recipes.rules(run.cfg), (".*", name)])
        label = run.cfg.recipe if name is None else name
        result = ptq.loss(model, tqdm(batches, desc=label, unit="batch", disable=not progress, leave=False),
                          bytes_per_token)
        rows.append({"recipe": label, "as_trained": name is None, **result})
        log.info("%s%s: loss %.4f, %.4f bits/byte", rows[-1]["recipe"], " (as trained)" if name is None else "",
                 result["loss"], result["bits_per_byte"])
    base = rows[0]["loss"]
    for r in rows:
        r["loss_increase"] = r["loss"] - base
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| recipe | loss | bits per byte | perplexity | vs as trained |", "|---|---|---|---|---|"]
    for r in rows:
        name = r["recipe"] + (" (as trained)" if r["as_trained"] else "")
        lines.append(f"| {name} | {r['loss']:.4f} | {r['bits_per_byte']:.4f} | {r['perplexity']:.3f} | "
                     f"{r['loss_increase']:+.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="", help="a trained run directory (its config.json and checkpoints/)")
    add_hf_arguments(parser, "a Hugging Face Llama directory instead of a run", "held-out tokens")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint step (default: the latest)")
    parser.add_argument("--recipe", action="append", default=[],
                        help="also evaluate with this recipe (a name in lp.recipes or fp4(...)); repeatable")
    parser.add_argument("--batches", type=int, default=None, help="held-out batches (default: the run's eval_batches)")
    parser.add_argument("--out", default="", help="write the rows here as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cli_logging()
    if args.batches is not None and args.batches < 1:
        parser.error(f"--batches must be >= 1; got {args.batches}")
    if bool(args.run) == bool(args.hf):
        parser.error("give a run directory or --hf <Hugging Face dir> (one of them)")
    if args.hf:
        return _main_hf(parser, args)
    try:
        cfg = restore.read_config(args.run)  # imports the run's config.imports: their recipes resolve below
    except (FileNotFoundError, ConfigError) as e:
        parser.error(str(e))
    _check_recipes(parser, args.recipe)
    try:
        run_recipes.check_run(args.run, cfg)
        run = restore.load_run(args.run, args.step)
    except (FileNotFoundError, run_recipes.UnknownRunRecipe) as e:
        parser.error(str(e))
    batches, bytes_per_token = held_out(run, args.batches)
    rows = evaluate(run, [None, *args.recipe], batches, bytes_per_token, progress=not args.no_progress)
    print(f"{args.run} at step {run.step}, {len(batches)} held-out batches of {run.cfg.data.batch_size} x "
          f"{run.cfg.data.seq_len} tokens:\n\n{table(rows)}")
    if args.out:
        write_json(args.out, {"environment": environment(), "run": args.run, "step": run.step,
                              "batches": len(batches), "rows": rows})
        print(f"wrote {args.out}")
    return 0


def _check_recipes(parser, names) -> None:
    """Each ``--recipe`` resolves (after the run's imports), else a one-line usage error."""
    for name in names:
        try:
            recipes.get(name)
        except ValueError as e:
            parser.error(f"--recipe: {e}")


def _main_hf(parser, args) -> int:
    _check_recipes(parser, args.recipe)
    try:
        data = data_config(args.hf, args.data, args.tokenizer, args.seq_len, args.batch_size,
                           20 if args.batches is None else args.batches)
        run = HFRun(args.hf, data)
        batches, bytes_per_token = held_out(run, args.batches)
    except (ValueError, FileNotFoundError) as e:
        parser.error(" ".join(str(e).split()))
    rows = evaluate(run, [None, *args.recipe], batches, bytes_per_token, progress=not args.no_progress)
    print(f"{args.hf} (Hugging Face), {len(batches)} held-out batches of {data.batch_size} x {data.seq_len} "
          f"tokens:\n\n{table(rows)}")
    if args.out:
        write_json(args.out, {"environment": environment(), "hf": args.hf, "data": data.to_dict(),
                              "batches": len(batches), "rows": rows})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
