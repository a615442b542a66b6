"""Hugging Face Llama checkpoints: ``load_hf`` computes transformers' logits on the committed tiny
checkpoints (tests/fixtures/hf, made by scripts/make_hf_fixtures.py), ``save_hf`` then
``load_hf`` round-trips bit-exactly, and configs lowprec's Llama does not compute are refused
naming the field."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from lowprec.models import llama, load_hf, save_hf

safetensors = pytest.importorskip("safetensors")

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "hf"
CASES = ("gqa_sharded", "tied_single")
# float32 logits of transformers (torch, eager attention) and of lowprec (XLA) differ by the
# rounding of their float32 sums, taken in different orders (dot products of length <= 96,
# softmax, rsqrt, sin/cos): a few units in the last place of the largest logit. 16 ulps of it
# (2**-19 relative) is the bound; a wrong layout or rotary convention moves logits by O(1).
RELATIVE = 2.0 ** -19


def _case(name):
    path = FIXTURES / name
    return str(path), np.load(path / "tokens.npy"), np.load(path / "logits.npy")


def _logits(model, tokens):
    return np.asarray(nnx.jit(lambda m, t: m(t))(model, tokens))


def _params(model):
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("name", CASES)
def test_float32_logits_equal_transformers(name):
    path, tokens, want = _case(name)
    model = load_hf(path, dtype="float32")
    got = _logits(model, tokens)
    assert got.dtype == np.float32 and got.shape == want.shape
    scale = float(np.abs(want).max())
    assert float(want.std()) > 0.5  # logits of order one: the tolerance below is far from them
    np.testing.assert_allclose(got, want, rtol=0, atol=RELATIVE * scale)


def test_the_fixtures_exercise_what_they_are_named_for():
    gqa, tied = load_hf(_case("gqa_sharded")[0]).cfg, load_hf(_case("tied_single")[0]).cfg
    assert gqa.n_kv_heads < gqa.n_heads and not gqa.tie_embeddings and gqa.rope_theta == 5e5
    assert tied.tie_embeddings and not tied.scale_tied_logits and tied.n_kv_heads == 1
    assert tied.head_dim * tied.n_heads != tied.d_model
    assert (FIXTURES / "gqa_sharded" / "model.safetensors.index.json").exists()
    assert (FIXTURES / "tied_single" / "model.safetensors").exists()


@pytest.mark.parametrize("name,override", [("gqa_sharded", dict(rope_theta=1e4)),
                                           ("tied_single", dict(scale_tied_logits=True))])
def test_a_different_convention_is_far_outside_the_tolerance(name, override):
    path, tokens, want = _case(name)
    got = _logits(load_hf(path, dtype="float32", **override), tokens)
    assert float(np.abs(got - want).max()) > 1000 * RELATIVE * float(np.abs(want).max())


def test_default_dtype_computes_in_bfloat16_on_float32_parameters():
    path, tokens, want = _case("gqa_sharded")
    model = load_hf(path)
    assert model.cfg.dtype == "bfloat16" and all(v.dtype == np.float32 for v in _params(model).values())
    got = _logits(model, tokens)
    assert got.dtype == np.float32
    assert 0 < float(np.abs(got - want).max()) < 0.1 * float(np.abs(want).max())


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("shard", [None, 20_000])
def test_save_then_load_round_trips_bit_exactly(name, shard, tmp_path):
    model = load_hf(_case(name)[0], dtype="float32")
    save_hf(model, str(tmp_path), max_shard_size=shard)
    assert (tmp_path / "model.safetensors.index.json").exists() == bool(shard)
    again = load_hf(str(tmp_path), dtype="float32")
    assert again.cfg == model.cfg
    before, after = _params(model), _params(again)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(after[k].view(np.uint32), before[k].view(np.uint32), err_msg=str(k))


def test_saving_in_the_checkpoint_dtype_rewrites_its_tensors(tmp_path):
    """bfloat16 tensors read into float32 parameters and saved as bfloat16: the same bits."""
    path = _case("tied_single")[0]
    save_hf(load_hf(path), str(tmp_path), dtype="bfloat16")
    with (safetensors.safe_open(f"{path}/model.safetensors", "np") as a,
          safetensors.safe_open(str(tmp_path / "model.safetensors"), "np") as b):
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            assert a.get_tensor(k).dtype.name == "bfloat16"
            np.testing.assert_array_equal(b.get_tensor(k).view(np.uint16), a.get_tensor(k).view(np.uint16))
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_a_lowprec_tied_model_is_saved_untied_with_its_scaled_logits(tmp_path):
    model = llama.Llama(llama.config_for("tiny", tie_embeddings=True, dtype="float32"), nnx.Rngs(0))
    save_hf(model, str(tmp_path))
    loaded = load_hf(str(tmp_path), dtype="float32")
    assert not loaded.cfg.tie_embeddings
    tokens = np.arange(32, dtype=np.int32).reshape(2, 16)
    want = _logits(model, tokens)
    np.testing.assert_allclose(_logits(loaded, tokens), want, rtol=0, atol=RELATIVE * float(np.abs(want).max()))


def test_saving_refuses_parameters_a_checkpoint_has_no_place_for(tmp_path):
    model = load_hf(_case("gqa_sharded")[0])
    model.blocks.attn.q.extra = nnx.Param(jax.numpy.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"blocks\.attn\.q\.extra"):
        save_hf(model, str(tmp_path))


def _with_config(tmp_path, name="gqa_sharded", **changes):
    src = FIXTURES / name
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    cfg = {**json.loads((src / "config.json").read_text()), **changes}
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v != "DELETE"}))
    return str(tmp_path)


@pytest.mark.parametrize("field,value", [
    ("architectures", ["GPT2LMHeadModel"]), ("model_type", "qwen2"), ("hidden_act", "gelu"),
    ("attention_bias", True), ("mlp_bias", True), ("sliding_window", 4096), ("attention_dropout", 0.1),
    ("quantization_config", {"quant_method": "gptq"}),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}),
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
])
def test_unsupported_configs_are_refused_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"config\.json: {field}(\.rope_type)?=.* is not supported; allowed: ") as e:
        load_hf(_with_config(tmp_path, **{field: value}))
    assert "\n" not in str(e.value)


def test_mistral_and_transformers_4_configs_are_read(tmp_path):
    path = _with_config(tmp_path, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=None,
                        rope_parameters="DELETE", rope_theta=5e5, rope_scaling=None, head_dim="DELETE")
    cfg = load_hf(path).cfg
    assert cfg.rope_theta == 5e5 and cfg.head_dim == 8 and cfg.n_kv_heads == 2


def test_checkpoints_that_do_not_match_the_config_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"lacks 9 tensors .*model\.layers\.2\."):
        load_hf(_with_config(tmp_path, num_hidden_layers=3))
    with pytest.raises(ValueError, match=r"model\.layers\.\d+\.mlp\.\w+_proj\.weight: shape \(\d+, \d+\) in the checkpoint"):
        load_hf(_with_config(tmp_path, intermediate_size=128))
    with pytest.raises(ValueError, match=r"no place for, e\.g\. 'model\.layers\.1\."):
        load_hf(_with_config(tmp_path, num_hidden_layers=1))
