"""experiments.ptq --hf and experiments.evaluate --hf on a tiny Hugging Face checkpoint with a
tokenizer.json made here; the packed export (models.hf_packed) loads back to the same forward."""

import json
import os
import random
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from experiments import evaluate as evaluate_script  # noqa: E402
from experiments import ptq as ptq_script  # noqa: E402
from lowprec import ptq  # noqa: E402
from lowprec.models import hf, hf_packed  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "gqa_sharded")
WORDS = "the cat sat on a mat dog log ran far and then came back to see who was there".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The GQA fixture with a word-level tokenizer.json (ids below its 256), and six text files."""
    d = tmp_path_factory.mktemp("hf")
    shutil.copytree(FIXTURE, d / "model")
    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(d / "model" / "tokenizer.json"))
    r = random.Random(0)
    (d / "text").mkdir()
    for i in range(6):
        (d / "text" / f"{i}.txt").write_text(" ".join(r.choice(WORDS) for _ in range(300)))
    return d


ARGS = ["--seq-len", "32", "--batch-size", "2", "--eval-batches", "2", "--calib-batches", "2"]


@pytest.mark.parametrize("weights,method", [("int4", "gptq"), ("nf4_qlora", "rtn")])
def test_ptq_hf_writes_results_and_a_packed_export_that_loads(model_dir, tmp_path, weights, method):
    out, export = tmp_path / "out", tmp_path / "export"
    ptq_script.main(["--hf", str(model_dir / "model"), "--data", f"text:{model_dir}/text/*.txt", "--weights", weights,
                     "--method", method, *ARGS, "--out", str(out), "--export", str(export)])
    (row,) = json.load(open(out / "results.json"))["rows"]
    assert row["weights"] == weights and row["method"] == method
    assert np.isfinite(row["loss_before"]) and np.isfinite(row["loss_after"]) and row["loss_after"] != row["loss_before"]
    assert len(row["layers"]) == 7 and all("weight_sqnr_db" in v for v in row["layers"].values())
    # In-memory bytes are exact counts; on disk this model's few thousand weights are outweighed by
    # orbax's per-array metadata, whose size varies by machine, so disk is only checked as reported.
    assert row["memory_bytes"] < row["bf16_memory_bytes"] and row["bits_per_weight"] < 8
    assert row["disk_bytes"] > 0 and row["bf16_disk_bytes"] > 0
    # The export: the same quantized model again (GPTQ's codes, not re-quantized), then loaded back.
    run = ptq_script.HFRun(str(model_dir / "model"), ptq_script.data_config(
        str(model_dir / "model"), f"text:{model_dir}/text/*.txt", seq_len=32, batch_size=2))
    calib, evals, _ = ptq_script._batches(run, 2, 2)
    qmodel, _ = ptq.quantize_model(run.model, ptq.Spec(weights=weights, method=method), calib)
    header = hf_packed.read_header(row["export"])
    assert set(header["layers"]) == {f"blocks.{g}.{n}" for g, n in (("attn", "q"), ("attn", "k"), ("attn", "v"),
                                     ("attn", "o"), ("mlp", "gate"), ("mlp", "up"), ("mlp", "down"))}
    back = hf_packed.load_packed(row["export"])
    assert type(back.blocks.attn.q).__name__ == "QuantizedDense"
    np.testing.assert_array_equal(np.asarray(back.blocks.mlp.up.codes[...]), np.asarray(qmodel.blocks.mlp.up.codes[...]))
    tokens = jnp.asarray(evals[0][0][:, :-1])
    want = np.asarray(nnx.jit(lambda m, t: m(t))(qmodel, tokens))
    got = np.asarray(nnx.jit(lambda m, t: m(t))(back, tokens))
    np.testing.assert_array_equal(got, want)
    assert ptq.loss(back, evals)["loss"] == pytest.approx(row["loss_after"], rel=1e-6)


def test_evaluate_hf_runs_with_other_recipes(model_dir, tmp_path, capsys):
    assert evaluate_script.main(["--hf", str(model_dir / "model"), "--data", f"text:{model_dir}/text/*.txt",
                                 "--recipe", "fp8", "--seq-len", "32", "--batch-size", "2", "--batches", "2",
                                 "--no-progress", "--out", str(tmp_path / "e.json")]) == 0
    rows = json.load(open(tmp_path / "e.json"))["rows"]
    assert [r["recipe"] for r in rows] == ["bf16", "fp8"] and rows[0]["as_trained"]
    assert rows[1]["loss"] != rows[0]["loss"] and all(np.isfinite(r["loss"]) for r in rows)
    assert rows[0]["bits_per_byte"] < rows[0]["loss"] / np.log(2)  # several bytes per word token


def test_hf_without_data_or_tokenizer_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        evaluate_script.main(["--hf", FIXTURE])
    assert "give --data SOURCE[:PATH]" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="tokenizer.json not found"):
        ptq_script.main(["--hf", FIXTURE, "--data", "text:x.txt"])
