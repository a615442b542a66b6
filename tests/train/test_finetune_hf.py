"""Fine-tuning from a Hugging Face checkpoint (finetune.init_from_hf) in every mode: the model's
sizes come from its config.json (recorded in the run's config.json), the first loss is the
loaded model's on the same batch, and a merged fine-tune exports back to the HF layout."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("safetensors")

from configs import lm  # noqa: E402
from lowprec import data as lpdata  # noqa: E402
from lowprec.models import hf, llama  # noqa: E402
from lowprec.nn import assign_recipes, lora  # noqa: E402
from lowprec.train import build, finetune, finetune_modes, loop  # noqa: E402
from lowprec.train.config_check import ConfigError  # noqa: E402
from lowprec.train.rundir import read_metrics  # noqa: E402
from .test_train import configure  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")
GQA = os.path.join(FIXTURES, "gqa_sharded")
TIED = os.path.join(FIXTURES, "tied_single")


def hf_cfg(path: str, **overrides):
    """Two fp32 steps of unquantized GEMMs on synthetic bytes (the fixtures' vocabulary is 256)."""
    return configure(lm.get_config("smoke"), {
        "finetune.init_from_hf": path, "policy": "fp32", "recipe": "none", "recipe_rules": (),
        "data.seq_len": 32, "data.batch_size": 4,
        "train.steps": 2, "train.log_every": 1, "train.eval_every": 100, "train.eval_batches": 1,
        "train.checkpoint_every": 100, "train.progress": False, "mesh.devices": 1, "optim.warmup_steps": 1,
        **overrides})


def first_batch(cfg):
    train_split, _ = lpdata.load("synthetic").split()
    return lpdata.Batches(train_split, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size, seed=cfg.seed).batch(0)


def reference_loss(path: str, cfg, rows_BxT) -> float:
    """The loss of the checkpoint as load_hf reads it, with the mode's recipes and adapters."""
    model = hf.load_hf(path, dtype="float32")
    assign_recipes(model, build.recipe_rules(cfg))
    finetune_modes.adapt(cfg, model)
    lora.set_deterministic(model, True)
    t = jnp.asarray(rows_BxT)
    return float(nnx.jit(lambda m, t: llama.cross_entropy(m(t[:, :-1]), t[:, 1:]))(model, t))


@pytest.mark.parametrize("path,mode", [(GQA, "full"), (TIED, "lora"), (GQA, "qlora"), (TIED, "qat")])
def test_init_from_hf_starts_at_the_loaded_models_loss(path, mode, tmp_path):
    cfg = hf_cfg(path, **{"finetune.mode": mode, "finetune.lora_rank": 4, "finetune.lora_alpha": 8.0})
    out = loop.train(cfg, str(tmp_path))
    rows = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if r["split"] == "train"]
    assert [r["step"] for r in rows] == [1, 2] and np.isfinite(out["loss"])
    resolved = finetune.resolve_model(cfg)
    want = reference_loss(path, resolved, first_batch(cfg))
    assert rows[0]["loss"] == pytest.approx(want, rel=1e-6)  # fp32 in another program: rounding only
    # The model fields of the run's config.json are the checkpoint's.
    recorded = json.load(open(tmp_path / "config.json"))
    want_cfg = hf.config_from_hf(hf.read_config(path))
    arch = json.loads(recorded["model"]["arch"])
    assert recorded["model"]["vocab_size"] == want_cfg.vocab_size
    assert recorded["model"]["tie_embeddings"] == want_cfg.tie_embeddings
    assert {k: arch[k] for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "d_head", "norm_eps")} == \
        {k: getattr(want_cfg, k) for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "d_head",
                                           "norm_eps")}
    assert arch["scale_tied_logits"] is False
    (init,) = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if r["split"] == "init"]
    assert init["from_hf"] == os.path.abspath(path) and len(init["checkpoint"]) == 16


def test_merged_finetune_exports_to_hf_bit_exactly(tmp_path):
    cfg = hf_cfg(GQA, **{"finetune.mode": "lora", "finetune.lora_rank": 4, "finetune.lora_alpha": 8.0,
                         "optim.lr": 1e-2})
    loop.train(cfg, str(tmp_path / "run"))
    tuned = finetune.load_finetuned(str(tmp_path / "run"))
    merged = lora.merge_lora(tuned.model)
    hf.save_hf(merged, str(tmp_path / "hf"))
    back = hf.load_hf(str(tmp_path / "hf"), dtype="float32")
    assign_recipes(back, [(".*", "none")])
    tokens = jnp.asarray(first_batch(cfg)[:, :-1])
    want = np.asarray(nnx.jit(lambda m, t: m(t))(merged, tokens))
    got = np.asarray(nnx.jit(lambda m, t: m(t))(back, tokens))
    np.testing.assert_array_equal(got, want)
    base = hf.load_hf(GQA, dtype="float32")
    assign_recipes(base, [(".*", "none")])
    assert not np.array_equal(np.asarray(nnx.jit(lambda m, t: m(t))(base, tokens)), want)  # the fine-tune shows


def test_init_from_hf_errors_name_the_fields(tmp_path):
    with pytest.raises(ConfigError, match="finetune.init_from_hf"):
        finetune.resolve_model(hf_cfg(str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="finetune.init_from=.*init_from_hf"):
        finetune.resolve_model(hf_cfg(GQA, **{"finetune.init_from": str(tmp_path)}))
