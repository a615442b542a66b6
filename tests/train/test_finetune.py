"""Fine-tuning end to end on the smoke config: from a pretrained run (full, qlora, qat), resume
from the fine-tune's own checkpoint, the final quantized evaluation, and clear config errors."""

import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lowprec as lp
from configs import finetune_order, lm
from experiments import finetune as finetune_script
from launch.sweep import expand
from lowprec import data as lpdata
from lowprec.models import llama
from lowprec.train import finetune, loop, restore
from lowprec.train.checkpoint import Checkpointer, abstract, fingerprint
from lowprec.train.config_check import ConfigError
from lowprec.train.rundir import RunDir, read_metrics
from .test_train import configure, train_smoke

TARGETS = (("attn", "q"), ("attn", "k"), ("attn", "v"), ("attn", "o"), ("mlp", "gate"), ("mlp", "up"), ("mlp", "down"))




@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A smoke model trained for 20 steps (synthetic data, bf16 compute)."""
    return train_smoke(str(tmp_path_factory.mktemp("pretrained")), steps=20)


def finetune_cfg(init_from: str, **overrides):
    """Fine-tunes in fp32 with unquantized GEMMs (plain float arithmetic to compare against)."""
    return configure(lm.get_config("smoke"), {
        "finetune.init_from": init_from, "policy": "fp32", "recipe": "none", "recipe_rules": (),
        "train.steps": 3, "train.log_every": 1, "train.eval_every": 100, "train.eval_batches": 1,
        "train.checkpoint_every": 100, "train.progress": False, "mesh.devices": 1, "optim.warmup_steps": 1,
        **overrides})


def losses(workdir, split="train"):
    return [(r["step"], r["loss"]) for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == split]


def fp32_model(params, rounded_to: str | None = None):
    """The tiny LLaMA in fp32 with ``params``, its targeted kernels rounded by the weight quantizer."""
    model = llama.Llama(llama.config_for("tiny", dtype="float32"), nnx.Rngs(0))
    lp.nn.assign_recipes(model, [(".*", "none")])
    nnx.update(model, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params))
    if rounded_to:
        q = lp.nn.weight_quantizer(rounded_to)
        for group, name in TARGETS:
            dense = getattr(getattr(model.blocks, group), name)
            dense.kernel[...] = jax.jit(jax.vmap(q))(dense.kernel[...])
    return model


def mean_loss(model, rows_BxT) -> float:
    return float(nnx.jit(lambda m, t: llama.cross_entropy(m(t[:, :-1]), t[:, 1:]))(model, jnp.asarray(rows_BxT)))


def test_lora_finetune_starts_at_the_pretrained_loss_and_rounds_at_the_end(pretrained, tmp_path):
    cfg = finetune_cfg(pretrained, **{"finetune.mode": "lora", "finetune.lora_rank": 4, "finetune.lora_alpha": 8.0,
                                      "finetune.eval_quantized": "int4", "train.eval_every": 3})
    out = loop.train(cfg, str(tmp_path))
    pre = restore.load_run(pretrained)
    train_split, val_split = lpdata.load("synthetic").split()
    first_batch = lpdata.Batches(train_split, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
                                 seed=cfg.seed).batch(0)
    want = mean_loss(fp32_model(pre.params), first_batch)
    (step, first), *_ = losses(tmp_path)
    assert step == 1 and first == pytest.approx(want, rel=1e-6)  # B = 0; fp32 in another program: rounding only
    assert first < losses(pretrained)[0][1] - 1.0  # far below where the pretraining started
    # Only the adapters trained: every other parameter is the pretrained one, bit for bit.
    tuned = finetune.load_finetuned(str(tmp_path))
    frozen = dict(nnx.to_flat_state(tuned.state.frozen))
    for path, value in nnx.to_flat_state(pre.params):
        stored = frozen[path[:-1] + ("base", path[-1])] if path[-2] in ("q", "k", "v", "o", "gate", "up", "down") \
            else frozen[path]
        np.testing.assert_array_equal(stored[...], value[...])
    assert all(np.abs(np.asarray(v[...])).max() > 0 for p, v in nnx.to_flat_state(tuned.state.params)
               if p[-1] == "lora_b")
    # The final quantized evaluation: W + (alpha/r) A B of each layer, rounded to int4, on the val split.
    merged = jax.tree.map(lambda x: x, pre.params)
    for group, name in TARGETS:
        layer = getattr(getattr(tuned.model.blocks, group), name)
        kernel = layer.base.kernel[...] + 2.0 * jnp.matmul(layer.lora_a[...], layer.lora_b[...],
                                                             precision=jax.lax.Precision.HIGHEST)
        merged["blocks"][group][name]["kernel"] = nnx.Param(kernel)
    evals = lpdata.EvalBatches(val_split, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size, max_batches=1)
    rows, valid = evals.batch(0)
    assert valid.all()
    want_q = mean_loss(fp32_model(merged, rounded_to="int4"), rows)
    (_, got_q), = losses(tmp_path, "val_quantized")
    assert got_q == pytest.approx(want_q, rel=1e-6) and out["val_quantized_loss"] == got_q
    assert abs(got_q - out["val_loss"]) > 10 * abs(got_q - want_q)  # the rounding shows, beyond float noise


def test_qlora_resumes_bit_exactly_from_its_own_checkpoint(pretrained, tmp_path):
    source = str(tmp_path / "pretrained")
    shutil.copytree(pretrained, source)
    cfg = finetune_cfg(source, **{"finetune.mode": "qlora", "finetune.lora_rank": 4, "train.steps": 4,
                                  "train.eval_every": 4, "train.checkpoint_every": 2})
    out = loop.train(cfg, str(tmp_path / "a"))
    # Run b: a copy of run a preempted after its step-2 checkpoint, resumed without its init_from.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    shutil.rmtree(source)
    loop.train(cfg, str(tmp_path / "b"))
    assert RunDir(str(tmp_path / "b")).status()[0] == "done"
    assert "resumed at step 2" in (tmp_path / "b" / "log.txt").read_text()
    for split in ("train", "val"):
        assert losses(tmp_path / "b", split) == losses(tmp_path / "a", split) != []
    # Where the fine-tune started, recorded once: the pretrained run, its step and checkpoint fingerprint.
    (init,) = [r for r in read_metrics(str(tmp_path / "b" / "metrics.jsonl")) if r["split"] == "init"]
    assert init == {"step": 0, "split": "init", "from": source, "checkpoint_step": 20,
                    "checkpoint": fingerprint(os.path.join(pretrained, "checkpoints"), 20)}  # the copy's = the original's
    a = finetune.load_finetuned(str(tmp_path / "a"))
    ckpt = Checkpointer(str(tmp_path / "b" / "checkpoints"), async_save=False)
    b_state, _ = ckpt.restore(ckpt.latest_step(), abstract(a.state))
    ckpt.close()
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b_state), strict=True):
        np.testing.assert_array_equal(x, y)
    # The frozen base (finetune.base_format's default nf4_qlora): bitsandbytes' NF4 codes of the
    # pretrained kernels, packed two to a byte, untouched by training.
    q = lp.nn.weight_quantizer("nf4_qlora")
    pre_params = restore.load_run(pretrained).params
    for group, name in TARGETS:
        codes = getattr(getattr(a.model.blocks, group), name).base.codes[...]
        kernel = pre_params["blocks"][group][name]["kernel"][...]
        want = jax.jit(jax.vmap(lambda w: q.quantize(w).packed))(kernel)
        assert codes.dtype == jnp.uint8
        np.testing.assert_array_equal(codes, want)
    # Memory: adapters only in the optimizer; the record and the script's summary say so.
    (mem,) = [r for r in read_metrics(str(tmp_path / "a" / "metrics.jsonl")) if r["split"] == "memory"]
    mcfg = llama.config_for("tiny")
    want_trainable = mcfg.n_layers * 4 * sum(
        a_in + a_out for a_in, a_out in [(64, 64), (64, 32), (64, 32), (64, 64), (64, 192), (64, 192), (192, 64)])
    assert mem["trainable_params"] == want_trainable == out["memory"]["trainable_params"]
    assert mem["trainable_bytes"] == 4 * want_trainable and mem["full_params"] == mcfg.num_params()
    assert 2 * mem["trainable_bytes"] <= mem["optimizer_bytes"] < 2 * mem["trainable_bytes"] + 64  # Adam's m, v
    assert mem["total_bytes"] < mem["full_total_bytes"] / 2
    text = finetune_script.summary(cfg, out)
    assert f"trainable parameters: {want_trainable:,} of {mcfg.num_params():,}" in text and "val_loss" in text


def test_qat_trains_through_the_quantizer(pretrained, tmp_path):
    cfg = finetune_cfg(pretrained, **{"finetune.mode": "qat", "finetune.qat_estimator": "dge",
                                      "finetune.base_format": "int4", "finetune.eval_quantized": "int4",
                                      "train.steps": 4, "train.eval_every": 4})
    out = loop.train(cfg, str(tmp_path))
    train = [loss for _, loss in losses(tmp_path)]
    assert all(math.isfinite(x) for x in train) and train[-1] < train[0]
    assert out["val_quantized_loss"] == out["val_loss"]  # the same rounded weights the training saw
    pre_kernel = restore.load_run(pretrained).params["blocks"]["mlp"]["up"]["kernel"][...]
    tuned = finetune.load_finetuned(str(tmp_path))
    assert np.abs(np.asarray(tuned.model.blocks.mlp.up.kernel[...]) - np.asarray(pre_kernel)).max() > 0
    assert tuned.model.blocks.mlp.up.recipe.fwd_weight.estimator.name == "dge"
    assert tuned.model.lm_head.recipe.fwd_weight is None  # untargeted layers keep their recipe


@pytest.mark.parametrize("override, error, message", [
    ({"finetune.mode": "lorax"}, ConfigError, "unknown finetune.mode 'lorax'; known: full, lora, qlora, qat"),
    ({"finetune.qat_estimator": "sgd"}, ConfigError, "unknown finetune.qat_estimator 'sgd'; known: ste, dge"),
    ({"finetune.mode": "qlora", "finetune.base_format": "nf5"}, ConfigError, "finetune.base_format: unknown weight"),
    ({"finetune.eval_quantized": "int3x"}, ConfigError, "finetune.eval_quantized: unknown weight format"),
    ({"finetune.mode": "lora", "finetune.lora_rank": 0}, ConfigError, "lora_rank.*positive integer"),
    ({"finetune.mode": "lora", "finetune.lora_targets": "attn("}, ConfigError, "not a regular expression"),
    ({"finetune.mode": "lora", "finetune.lora_targets": "lm_hed"}, ValueError, "match no QuantDense layer"),
    ({"finetune.mode": "lora", "train.telemetry_every": 2}, ConfigError, "telemetry_every"),
    ({"data.include": "shakespeare"}, ValueError, "unknown source 'shakespeare' in include"),
    ({"finetune.init_from": "/nonexistent/run"}, FileNotFoundError, "not a run directory"),
    ({"finetune.init_from": "PRETRAINED", "model.size": "20m"}, ValueError, "model.size='tiny'.*'20m'"),
])
def test_bad_finetune_config_values_are_clear_errors(pretrained, tmp_path, override, error, message):
    override = {k: pretrained if v == "PRETRAINED" else v for k, v in override.items()}
    cfg = configure(lm.get_config("smoke"), {"train.progress": False, "mesh.devices": 1, **override})
    with pytest.raises(error, match=message) as e:
        loop.train(cfg, str(tmp_path / "run"))
    if error is ConfigError:  # found before start-up: no run directory is made
        assert not (tmp_path / "run").exists()
    else:
        assert not isinstance(e.value, ConfigError) and RunDir(str(tmp_path / "run")).status()[0] == "failed"


def test_finetune_order_sweep_compares_equal_runs():
    runs = expand("configs/finetune_order.py:tiny,nf4", root="runs/x")
    cfgs = [r.config for r in runs]
    assert {(c.finetune.mode, c.finetune.qat_estimator if c.finetune.mode == "qat" else "") for c in cfgs} == {
        ("full", ""), ("lora", ""), ("qlora", ""), ("qat", "ste"), ("qat", "dge")}
    assert [c.optim.lr for c in cfgs].count(0.0) == 1  # the no-fine-tuning baseline
    for c in cfgs:  # equal steps, data, seed and start; every artifact rounded to the study's format
        assert (c.train.steps, c.data.include, c.seed) == (cfgs[0].train.steps, "shakespeare", 0)
        assert c.finetune.init_from == finetune_order.pretrain_dir("tiny")
        assert c.finetune.base_format == c.finetune.eval_quantized == "nf4"
    pre = finetune_order.get_config("tiny,pretrain")
    assert pre.data.exclude == "shakespeare" and pre.data.include == "" and pre.finetune.init_from == ""
    with pytest.raises(ValueError, match="not a sweep"):
        finetune_order.get_sweep("tiny,pretrain")
    with pytest.raises(ValueError, match="unknown variant 'int3'"):
        finetune_order.get_config("tiny,int3")
