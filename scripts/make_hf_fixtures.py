"""Writes tests/fixtures/hf/: tiny random transformers LlamaForCausalLM checkpoints with their
float32 logits, the reference that tests/models/test_hf.py compares ``lowprec.models.load_hf``
against without torch; then checks that directories written by ``lowprec.models.save_hf`` load
in transformers with the same logits.

    pip install transformers   # 5.25.0 with torch 2.13 (CPU) made the committed files
    python scripts/make_hf_fixtures.py

Each case directory holds what ``save_pretrained`` wrote (config.json, safetensors) and
``tokens.npy`` (int32, (2, 16)) with ``logits.npy`` (float32, (2, 16, 256)): transformers'
logits (eager attention, float32) of the checkpoint as saved, read back by ``from_pretrained``.
- ``gqa_sharded``: untied head, 4 query heads over 2 KV heads, rope_theta 5e5, rms_norm_eps
  1e-5, float32 tensors in shards of at most 40 KB (model.safetensors.index.json);
- ``tied_single``: tied embeddings, 4 query heads over 1 KV head, head_dim 16 != hidden/heads,
  bfloat16 tensors in one model.safetensors.
Weights are N(0, 1/fan_in) (embeddings N(0, 1)), norm scales 1 + N(0, 0.2²): logits of order
one, so that a wrong layout changes them by far more than float32 rounding does.
"""

import pathlib
import shutil
import sys
import tempfile

import numpy as np
import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lowprec.models import hf, llama  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "hf"
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 16)).astype(np.int32)
CASES = {
    "gqa_sharded": (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
                    torch.float32, "40KB"),
    "tied_single": (dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=16, tie_word_embeddings=True),
                    torch.bfloat16, "10MB"),
}
# Differences between transformers and lowprec beyond this (float32 logits of order one) fail the script.
TOLERANCE = 1e-4


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(noise * p.shape[1] ** -0.5)


def _hf_logits(path) -> np.ndarray:
    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        return model(torch.from_numpy(TOKENS).long()).logits.numpy()


def _lowprec_logits(model) -> np.ndarray:
    return np.asarray(model(TOKENS))


def _check(what: str, got: np.ndarray, want: np.ndarray) -> None:
    err = float(np.abs(got - want).max())
    print(f"{what}: max |difference| {err:.2e} (logits' max |value| {float(np.abs(want).max()):.2f})")
    if not err <= TOLERANCE:
        raise SystemExit(f"{what}: differs by {err} > {TOLERANCE}")


def make(name: str, fields: dict, dtype, shard: str, seed: int) -> None:
    config = transformers.LlamaConfig(vocab_size=256, max_position_embeddings=64, **fields)
    model = transformers.LlamaForCausalLM(config)
    _randomize(model, seed)
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    model.to(dtype).save_pretrained(out, max_shard_size=shard)
    logits = _hf_logits(out)
    np.save(out / "tokens.npy", TOKENS)
    np.save(out / "logits.npy", logits.astype(np.float32))
    loaded = hf.load_hf(str(out), dtype="float32")
    _check(f"{name}: lowprec load_hf vs transformers", _lowprec_logits(loaded), logits)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_hf(loaded, tmp, max_shard_size=30_000)
        _check(f"{name}: transformers reading save_hf's shards", _hf_logits(tmp), logits)


def check_native_tied() -> None:
    """A lowprec-initialized tied model (logits scaled by d_model^-0.5), saved untied."""
    import flax.nnx as nnx
    model = llama.Llama(llama.config_for("tiny", tie_embeddings=True, dtype="float32"), nnx.Rngs(0))
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_hf(model, tmp)
        _check("lowprec tied model: transformers reading save_hf's file", _hf_logits(tmp), _lowprec_logits(model))


if __name__ == "__main__":
    torch.manual_seed(0)
    for seed, (name, (fields, dtype, shard)) in enumerate(CASES.items()):
        make(name, fields, dtype, shard, seed)
    check_native_tied()
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"{OUT.relative_to(ROOT)}: {total / 1024:.0f} KB")
