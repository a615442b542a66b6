"""A Llama trained by lowprec, saved in the Hugging Face layout, loaded back, PTQ'd and QLoRA-fine-tuned
from the HF files, in one command:

    LOWPREC_DATA_DIR=.corpus python -m experiments.hf_demo --workdir runs/hf_demo --out experiments/results/hf_demo

Steps (each prints a line as it starts and ends):

1. ``experiments.train --config configs/lm.py:cpu`` with ``model.size`` (default 6m) for
   ``--train-steps`` steps on the default corpus (pypi_v1, bytes);
2. ``models.save_hf`` of its last checkpoint to ``<workdir>/hf`` (config.json, model.safetensors)
   with a byte-level ``tokenizer.json`` (token i = byte i, ``</s>`` = 0, the corpus's separator);
3. ``models.load_hf`` of that directory: parameters compared bit for bit with the run's, logits on
   one batch, the tokenizer against the corpus's byte tokenizer;
4. ``experiments.evaluate`` of the run and ``--hf`` of the directory on the same held-out batches
   (the two losses must agree), and ``--hf --data text:...`` through the tokenizer;
5. ``experiments.ptq --hf`` for int8, int4, nf4_qlora (round to nearest) and GPTQ int4, each exported
   as packed codes and scales;
6. ``experiments.finetune`` with ``finetune.init_from_hf=<workdir>/hf finetune.mode=qlora`` for
   ``--ft-steps`` steps, and its first logged loss compared with the loss of the loaded model
   (NF4 base, zero-initialized adapters) on the same first batch.

``--out`` receives small files only (summary.json, README.md, the PTQ report and results, the
evaluation rows, both runs' metrics); checkpoints and safetensors stay under ``--workdir``.
A step whose output is already in ``--workdir`` is not redone (training resumes).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

T0 = time.time()


def say(msg: str) -> None:
    print(f"[hf_demo {time.time() - T0:7.1f}s] {msg}", flush=True)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what the ``tokenizers`` ByteLevel pre-tokenizer emits)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def write_byte_tokenizer(path: str) -> None:
    """A ``tokenizer.json`` whose ids are lowprec's byte ids: byte b is token b, except 0, the
    document separator, named ``</s>`` (the corpus removes NUL bytes from text)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    chars = bytes_to_unicode()
    vocab = {chars[b]: b for b in range(1, 256)}
    vocab["</s>"] = 0
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("</s>", special=True)])
    tok.save(path)


def sh(cmd: list[str], log_path: str) -> None:
    """Runs ``cmd`` (this Python), its output to ``log_path``; stops the demo if it fails."""
    say("$ " + " ".join(cmd))
    with open(log_path, "w") as f:
        rc = subprocess.call([sys.executable, *cmd], stdout=f, stderr=subprocess.STDOUT)
    if rc:
        tail = open(log_path).read()[-3000:]
        raise SystemExit(f"error: {' '.join(cmd[:3])} exited with {rc}; the end of {log_path}:\n{tail}")


def train(args, workdir: str) -> None:
    n = args.train_steps
    sh(["-m", "experiments.train", "--config", "configs/lm.py:cpu", "--workdir", workdir,
        f"--config.model.size={args.size}", f"--config.train.steps={n}", f"--config.train.eval_every={n}",
        f"--config.train.checkpoint_every={n}", f"--config.train.eval_batches={args.eval_batches}",
        "--config.train.log_every=10", "--config.train.progress=False"], os.path.join(args.workdir, "train.log"))


def save_and_check(args, run_dir: str, hf_dir: str) -> dict:
    from lowprec import data as lpdata
    from lowprec.data import hf_tokenizer
    from lowprec.data.tokenizer import ByteTokenizer
    from lowprec.models import hf
    from lowprec.nn import assign_recipes
    from lowprec.train import build, restore

    run = restore.load_run(run_dir)
    hf.save_hf(run.model, hf_dir)
    write_byte_tokenizer(os.path.join(hf_dir, hf_tokenizer.TOKENIZER_FILE))
    files = {name: os.path.getsize(os.path.join(hf_dir, name)) for name in sorted(os.listdir(hf_dir))}
    say(f"saved {hf_dir}: " + ", ".join(f"{k} ({v:,} bytes)" for k, v in files.items()))

    loaded = hf.load_hf(hf_dir, dtype=run.model.cfg.dtype)
    assign_recipes(loaded, build.recipe_rules(run.cfg))
    ours = jax.tree.leaves(nnx.state(run.model, nnx.Param))
    theirs = jax.tree.leaves(nnx.state(loaded, nnx.Param))
    params_equal = len(ours) == len(theirs) and all(
        a.shape == b.shape and a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(ours, theirs))
    corpus = lpdata.load(run.cfg.data.source)
    _, val = corpus.split()
    tokens = jnp.asarray(lpdata.EvalBatches(val, seq_len=run.cfg.data.seq_len, batch_size=4, max_batches=1).batch(0)[0])
    logits = nnx.jit(lambda m, t: m(t).astype(jnp.float32))
    diff = float(jnp.max(jnp.abs(logits(run.model, tokens) - logits(loaded, tokens))))

    tok = hf_tokenizer.load_tokenizer(hf_dir)
    text = open("README.md", encoding="utf-8").read()
    ids = tok.encode(text)
    tokenizer_ok = (tok.eot_id == ByteTokenizer.eot_id and tok.vocab_size == ByteTokenizer.vocab_size
                    and np.array_equal(ids, np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64))
                    and tok.decode(ids) == text)
    check = {"files": files, "params": int(sum(x.size for x in ours)), "params_bit_equal": bool(params_equal),
             "logits_max_abs_diff": diff, "tokenizer_matches_bytes": bool(tokenizer_ok),
             "step": int(run.step), "config": json.load(open(os.path.join(hf_dir, hf.CONFIG)))}
    say(f"load_hf: parameters bit-equal {params_equal}, logits max |diff| {diff:.3g} on 4 x {tokens.shape[1]} "
        f"tokens, tokenizer.json = bytes {tokenizer_ok}")
    if not (params_equal and diff == 0.0 and tokenizer_ok):
        raise SystemExit("error: the saved checkpoint does not load back as the run's model")
    return check


def evaluate(args, run_dir: str, hf_dir: str) -> dict:
    from experiments import evaluate as ev
    out = os.path.join(args.workdir, "eval")
    e = str(args.eval_batches)
    ev.main([run_dir, "--batches", e, "--out", os.path.join(out, "run.json"), "--no-progress"])
    ev.main(["--hf", hf_dir, "--data", args.data, "--batches", e, "--seq-len", "128", "--batch-size", "16",
             "--recipe", "fp8", "--out", os.path.join(out, "hf.json"), "--no-progress"])
    ev.main(["--hf", hf_dir, "--data", "text:docs/*.md", "--batches", "4", "--seq-len", "128", "--batch-size", "16",
             "--out", os.path.join(out, "hf_text.json"), "--no-progress"])
    rows = {k: json.load(open(os.path.join(out, f"{k}.json"))) for k in ("run", "hf", "hf_text")}
    run_loss, hf_loss = rows["run"]["rows"][0]["loss"], rows["hf"]["rows"][0]["loss"]
    say(f"held-out loss: run {run_loss:.6f}, HF directory {hf_loss:.6f} (|diff| {abs(run_loss - hf_loss):.2g}); "
        f"docs/*.md through tokenizer.json {rows['hf_text']['rows'][0]['loss']:.4f}")
    return {k: v["rows"] for k, v in rows.items()} | {"batches": {k: v["batches"] for k, v in rows.items()}}


PTQ_SETTINGS = (("int8", "rtn"), ("int4", "rtn"), ("nf4_qlora", "rtn"), ("int4", "gptq"))


def quantize(args, hf_dir: str) -> list[dict]:
    from experiments import ptq as ptq_cli
    out, export = os.path.join(args.workdir, "ptq"), os.path.join(args.workdir, "packed")
    for weights, method in PTQ_SETTINGS:
        say(f"$ python -m experiments.ptq --hf {hf_dir} --data {args.data} --weights {weights} --method {method}")
        ptq_cli.main(["--hf", hf_dir, "--data", args.data, "--seq-len", "128", "--batch-size", "16",
                      "--weights", weights, "--method", method, "--calib-batches", "4",
                      "--eval-batches", str(args.eval_batches), "--out", out,
                      "--export", os.path.join(export, f"{weights}-{method}")])  # one directory each
    rows = ptq_cli.read_rows(out)
    for r in rows:
        say(f"ptq {r['setting']}: loss {r['loss_before']:.4f} -> {r['loss_after']:.4f} ({r['loss_increase']:+.4f}), "
            f"weight SQNR {r['weight_sqnr_db']:.1f} dB, {r['bits_per_weight']:.2f} bits/weight, "
            f"disk {r['disk_bytes']:,} of bf16 {r['bf16_disk_bytes']:,} bytes")
    return rows


def finetune(args, hf_dir: str, ft_dir: str) -> None:
    n = args.ft_steps
    sh(["-m", "experiments.finetune", "--config", "configs/lm.py:cpu", "--workdir", ft_dir,
        f"--config.model.size={args.size}", f"--config.finetune.init_from_hf={hf_dir}", "--config.finetune.mode=qlora",
        f"--config.train.steps={n}", f"--config.train.eval_every={n}", f"--config.train.checkpoint_every={n}",
        f"--config.train.eval_batches={args.eval_batches}", "--config.train.log_every=1",
        "--config.train.progress=False",
        "--config.optim.lr=1e-3", "--config.optim.warmup_steps=5"], os.path.join(args.workdir, "finetune.log"))


def first_loss(hf_dir: str, ft_dir: str) -> dict:
    """The loaded model's loss (mode qlora: NF4 base, adapters at init) on the fine-tune's first
    batch, beside the fine-tune's first logged loss and the bf16 checkpoint's loss on that batch."""
    from lowprec import data as lpdata
    from lowprec.models import hf, llama
    from lowprec.nn import assign_recipes, lora
    from lowprec.optim import get_policy
    from lowprec.train import build, config_check, finetune_modes, loop, restore
    from lowprec.train.rundir import read_metrics

    cfg = restore.read_config(ft_dir)
    train_split, _ = loop.load_corpus(cfg).split()
    rows = jnp.asarray(lpdata.Batches(train_split, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
                                      seed=config_check.data_seed(cfg)).batch(0))
    loss = nnx.jit(lambda m, t: llama.cross_entropy(m(t[:, :-1]), t[:, 1:]))
    dtype = get_policy(cfg.policy).compute_dtype  # the fine-tune's compute dtype (mixed_bf16: bfloat16)
    plain = hf.load_hf(hf_dir, dtype=jnp.dtype(dtype).name)
    assign_recipes(plain, build.recipe_rules(cfg))
    bf16_loss = float(loss(plain, rows))
    model = hf.load_hf(hf_dir, dtype=jnp.dtype(dtype).name)
    assign_recipes(model, build.recipe_rules(cfg))
    finetune_modes.adapt(cfg, model)
    lora.set_deterministic(model, True)
    loaded_loss = float(loss(model, rows))
    metrics = read_metrics(os.path.join(ft_dir, "metrics.jsonl"))
    train_rows = [r for r in metrics if r.get("split") == "train"]
    val = [r for r in metrics if r.get("split") == "val"]
    out = {"loaded_nf4_loss_first_batch": loaded_loss, "loaded_bf16_loss_first_batch": bf16_loss,
           "finetune_first_loss": train_rows[0]["loss"], "finetune_last_loss": train_rows[-1]["loss"],
           "first_loss_rel_diff": abs(train_rows[0]["loss"] - loaded_loss) / loaded_loss,
           "steps": train_rows[-1]["step"], "val_loss": val[-1]["loss"] if val else None,
           "compute_dtype": jnp.dtype(dtype).name}
    say(f"qlora first loss {out['finetune_first_loss']:.6f} vs the loaded model's (NF4 base) {loaded_loss:.6f} "
        f"(rel. diff {out['first_loss_rel_diff']:.2g}; bf16 checkpoint {bf16_loss:.6f}); after {out['steps']} steps "
        f"train {out['finetune_last_loss']:.4f}, validation {out['val_loss']:.4f}")
    return out


def versions() -> dict:
    from importlib import metadata
    names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "safetensors", "tokenizers", "numpy")
    return {n: metadata.version(n) for n in names}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/hf_demo", help="runs, the HF directory, packed exports (large files)")
    p.add_argument("--out", default="experiments/results/hf_demo", help="small result files")
    p.add_argument("--size", default="6m", help="model size (lowprec.models.llama.SIZES)")
    p.add_argument("--train-steps", dest="train_steps", type=int, default=300)
    p.add_argument("--ft-steps", dest="ft_steps", type=int, default=40)
    p.add_argument("--eval-batches", dest="eval_batches", type=int, default=8, help="held-out batches of 16 x 128")
    p.add_argument("--data", default="pypi_v1", help="the corpus of the PTQ/evaluation steps (the training one)")
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    run_dir, hf_dir, ft_dir = (os.path.abspath(os.path.join(args.workdir, d)) for d in ("train", "hf", "qlora"))
    cli_args = argv if argv is not None else sys.argv[1:]
    summary = {"command": " ".join(["python", "-m", "experiments.hf_demo", *cli_args]),
               "args": vars(args), "versions": versions(), "device": str(jax.devices()[0]),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    timings = {}

    def step(i, name, fn):
        say(f"step {i}/6: {name}")
        t = time.time()
        result = fn()
        timings[name] = round(time.time() - t, 1)
        say(f"step {i}/6 done in {timings[name]:.0f}s")
        return result

    step(1, f"train {args.size} for {args.train_steps} steps", lambda: train(args, run_dir))
    summary["save_load"] = step(2, "save_hf + tokenizer.json, load_hf back",
                                lambda: save_and_check(args, run_dir, hf_dir))
    summary["evaluate"] = step(3, "evaluate the run and the HF directory", lambda: evaluate(args, run_dir, hf_dir))
    summary["ptq"] = step(4, "PTQ from the HF directory", lambda: quantize(args, hf_dir))
    step(5, f"QLoRA fine-tune from the HF directory ({args.ft_steps} steps)", lambda: finetune(args, hf_dir, ft_dir))
    summary["qlora"] = step(6, "first fine-tune loss vs the loaded model", lambda: first_loss(hf_dir, ft_dir))
    summary["seconds"] = timings | {"total": round(time.time() - T0, 1)}

    os.makedirs(args.out, exist_ok=True)
    for src, dst in ((os.path.join(args.workdir, "ptq", "results.json"), "ptq_results.json"),
                     (os.path.join(args.workdir, "ptq", "report.md"), "ptq_report.md"),
                     (os.path.join(run_dir, "metrics.jsonl"), "train_metrics.jsonl"),
                     (os.path.join(ft_dir, "metrics.jsonl"), "qlora_metrics.jsonl"),
                     (os.path.join(ft_dir, "config.json"), "qlora_config.json"),
                     (os.path.join(run_dir, "config.json"), "train_config.json")):
        shutil.copyfile(src, os.path.join(args.out, dst))
    for name in glob.glob(os.path.join(args.workdir, "eval", "*.json")):
        shutil.copyfile(name, os.path.join(args.out, "eval_" + os.path.basename(name)))
    shutil.copyfile(os.path.join(hf_dir, "config.json"), os.path.join(args.out, "hf_config.json"))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    say(f"wrote {args.out}/summary.json ({summary['seconds']['total']:.0f}s in all)")
    return 0


if __name__ == "__main__":
    jnp.zeros(())  # initialize the backend before absl/orbax logging
    sys.exit(main())
