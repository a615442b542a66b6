"""PTQ of a trained smoke model: determinism, error order, calibration, storage, the script."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import ptq as ptq_config
from experiments import ptq as ptq_script
from lowprec import data as lpdata
from lowprec import ptq
from lowprec.train import restore
from tests.train.test_train import train_smoke


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = train_smoke(str(tmp_path_factory.mktemp("ptq_run")), steps=60)
    run = restore.load_run(path)
    _, val = lpdata.load("synthetic").split()
    evals = lpdata.EvalBatches(val, seq_len=64, batch_size=8, max_batches=4)
    batches = [evals.batch(i) for i in range(len(evals))]
    return path, run, [b for b, _ in batches[:2]], batches


def test_int4_hurts_more_than_int8_and_ptq_is_deterministic(trained):
    _, run, calib, evals = trained
    base = ptq.loss(run.model, evals)["loss"]
    results = {}
    for w in ("int8", "int4"):
        model, report = ptq.quantize_model(run.model, ptq.Spec(w), calib)
        results[w] = (ptq.loss(model, evals)["loss"], report)
    again = ptq.loss(ptq.quantize_model(run.model, ptq.Spec("int4"), calib)[0], evals)["loss"]
    assert again == results["int4"][0]
    assert abs(results["int8"][0] - base) < abs(results["int4"][0] - base)
    assert results["int4"][0] > base
    for path, r8 in results["int8"][1].items():  # every layer, every stacked index
        r4 = results["int4"][1][path]
        assert np.all(np.asarray(r8["weight_sqnr_db"]) > np.asarray(r4["weight_sqnr_db"]) + 15)
        assert np.all(np.asarray(r8["output_sqnr_db"]) > np.asarray(r4["output_sqnr_db"]) + 15)


def test_gptq_raises_every_layers_output_sqnr(trained):
    _, run, calib, evals = trained
    _, rtn = ptq.quantize_model(run.model, ptq.Spec("int4"), calib)
    _, g = ptq.quantize_model(run.model, ptq.Spec("int4", "gptq"), calib)
    for path in rtn:
        assert np.all(np.asarray(g[path]["output_sqnr_db"]) > np.asarray(rtn[path]["output_sqnr_db"])), path


def test_output_sqnr_from_the_gram_matrix_equals_the_direct_one():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((200, 12)), rng.standard_normal((12, 5))
    q = np.round(w * 2) / 2
    got = ptq.layer_errors(w, q, x.T @ x)
    direct = 10 * np.log10(np.sum((x @ w) ** 2) / np.sum((x @ (w - q)) ** 2))
    assert got["output_sqnr_db"] == pytest.approx(float(direct), rel=1e-9)
    assert got["weight_sqnr_db"] == pytest.approx(float(10 * np.log10(np.sum(w ** 2) / np.sum((w - q) ** 2))))


def test_collected_statistics_match_the_layer_inputs(trained):
    """The Gram matrix and absmax of the first MLP input equal numpy's on the same activations."""
    _, run, calib, _ = trained
    stats = ptq.collect(run.model, "mlp/down", calib[:1])["blocks/mlp/down"]
    assert stats.gram.shape == (2, 192, 192) and stats.absmax.shape == (2,)
    assert stats.tokens == calib[0].shape[0] * (calib[0].shape[1] - 1)
    assert np.all(np.linalg.eigvalsh(stats.gram.astype(np.float64)) > -1e-3 * stats.gram.max())
    rows = stats.rows.astype(np.float64)
    assert np.all(np.abs(rows).max(axis=(-2, -1)) <= stats.absmax)
    np.testing.assert_allclose(np.einsum("lni,lnj->lij", rows, rows).trace(axis1=1, axis2=2) /
                               rows.shape[1], stats.gram.trace(axis1=1, axis2=2) / stats.tokens, rtol=0.5)


def test_clip_values_against_numpy():
    rng = np.random.default_rng(1)
    rows = rng.standard_t(3, size=(2, 300, 16)).astype(np.float32)
    absmax = np.abs(rows).max(axis=(-2, -1))
    q = ptq.activation_quantizer("int8", "absmax")
    np.testing.assert_array_equal(ptq.clip_values(q, "absmax", absmax, rows), absmax)
    np.testing.assert_allclose(ptq.clip_values(q, "percentile", absmax, rows, 99.0),
                               np.percentile(np.abs(rows).reshape(2, -1), 99.0, axis=-1), rtol=1e-6)
    q4 = ptq.activation_quantizer("int4", "mse")
    got = ptq.clip_values(q4, "mse", absmax, rows)
    ratios = np.asarray(ptq.calibration.MSE_RATIOS)
    for layer in range(2):  # int4 symmetric: scale = clip / 7, saturate at +-7 (float64 numpy)
        x = rows[layer].astype(np.float64)
        errs = [np.mean((np.clip(np.round(x / (absmax[layer] * r / 7)), -7, 7) * (absmax[layer] * r / 7) - x) ** 2)
                for r in ratios]
        assert got[layer] == pytest.approx(absmax[layer] * ratios[int(np.argmin(errs))], rel=1e-6)
        assert got[layer] < absmax[layer]  # heavy tails: clipping pays


def test_quantized_input_saturates_at_the_calibrated_clip():
    q = ptq.activation_quantizer("int8", "absmax")
    layer = ptq.QuantizedInput(lambda x, key=None, rngs=None: x, q, np.asarray([2.0]))
    x = jnp.asarray([[-5.0, -2.0, 0.5, 1.0, 3.0]])
    y = np.asarray(layer(x))
    step = 2.0 / 127
    np.testing.assert_allclose(y, np.clip(np.round(np.asarray(x) / step), -127, 127) * step, rtol=1e-6)


def test_save_and_load_restore_the_quantized_model(trained, tmp_path):
    _, run, calib, evals = trained
    model, _ = ptq.quantize_model(run.model, ptq.Spec("int4", "gptq", activations="int8"), calib)
    disk = ptq.save(model, str(tmp_path / "q"))
    assert disk == ptq.disk_bytes(str(tmp_path / "q"))
    fresh, _ = ptq.quantize_model(run.model, ptq.Spec("int4", "rtn", activations="int8",
                                                       act_calibration="percentile"), calib)
    loaded = ptq.load(fresh, str(tmp_path / "q"))     # same structure, other values: all replaced
    # What was stored: codes and scales exactly, the other parameters (norms, embeddings) in bf16.
    stored = nnx.clone(model)
    nnx.update(stored, jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(x.dtype), nnx.state(stored, nnx.Param)))
    assert ptq.loss(loaded, evals)["loss"] == ptq.loss(stored, evals)["loss"]
    for a, b in zip(jax.tree.leaves(nnx.state(loaded)), jax.tree.leaves(nnx.state(stored))):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    bf16 = ptq.save(run.model, str(tmp_path / "bf16"))
    assert disk < bf16


def test_memory_counts_packed_codes_and_scales(trained):
    _, run, _, _ = trained
    model, report = ptq.quantize_model(run.model, ptq.Spec("int4"))
    mem = ptq.memory_bytes(model)
    expected = 0
    for path in report:
        module = run.model
        for p in path.split("/"):
            module = getattr(module, p)
        layers, n_in, n_out = module.kernel.shape
        expected += layers * (n_in * n_out // 2 + 4 * n_out)   # 4-bit codes, one fp32 scale per output
    assert mem["quantized_bytes"] == expected
    bf16 = ptq.memory_bytes(run.model)
    assert mem["total_bytes"] == mem["quantized_bytes"] + bf16["total_bytes"] - 2 * sum(
        int(np.prod(getattr(getattr(run.model.blocks, p.split("/")[1]), p.split("/")[2]).kernel.shape))
        for p in report)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="awq"), "unknown ptq method 'awq'; known: rtn, gptq"),
    (dict(weights="int5x"), "unknown weight format 'int5x'"),
    (dict(activations="int8", act_calibration="kl"), "unknown activation calibration 'kl'; known: absmax"),
    (dict(activations="fp7"), "activation format 'fp7'"),
    (dict(damp=0.0), "damp must be positive"),
])
def test_bad_specs_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ptq.Spec(**kwargs)


def test_gptq_without_calibration_data_is_an_error(trained):
    _, run, _, _ = trained
    with pytest.raises(ValueError, match="calibration needs at least one batch"):
        ptq.quantize_model(run.model, ptq.Spec("int4", "gptq"))


def test_the_script_writes_results_and_report(trained, tmp_path, capsys):
    path, _, _, _ = trained
    out = str(tmp_path / "out")
    for w, m in (("int8", "rtn"), ("int4", "gptq")):
        ptq_script.main(["--checkpoint", path, "--weights", w, "--method", m, "--calib-batches", "1",
                         "--eval-batches", "2", "--out", out])
    rows = json.load(open(os.path.join(out, "results.json")))["rows"]
    assert [r["setting"] for r in rows] == ["W:int8/rtn", "W:int4/gptq"]  # a second call adds to the first
    r = rows[1]
    assert r["disk_bytes"] < r["bf16_disk_bytes"] and r["memory_bytes"] < r["bf16_memory_bytes"]
    assert 4.0 < r["bits_per_weight"] < 5.0
    assert os.path.exists(os.path.join(out, "ptq_loss_increase.png"))
    report = open(os.path.join(out, "report.md")).read()
    assert "W:int4/gptq" in report and f"{r['loss_after']:.4f}" in report
    assert "W:int4/gptq" in capsys.readouterr().out
    # an interrupted sweep resumes: settings already in results.json are not evaluated again
    ptq_script.main(["--checkpoint", path, "--weights", "int4", "--method", "gptq", "--calib-batches", "1",
                     "--eval-batches", "2", "--out", out])
    assert "(in " + out + "/results.json)" in capsys.readouterr().out
    assert json.load(open(os.path.join(out, "results.json")))["rows"] == rows
    # results of separate calls merge into one report
    other = str(tmp_path / "other")
    ptq_script.main(["--checkpoint", path, "--weights", "nf4", "--calib-batches", "1", "--eval-batches", "2",
                     "--out", other])
    merged = str(tmp_path / "merged")
    ptq_script.main(["--merge", out, other, "--out", merged])
    settings = [r["setting"] for r in json.load(open(os.path.join(merged, "results.json")))["rows"]]
    assert settings == ["W:int8/rtn", "W:int4/gptq", "W:nf4/rtn"]
    sources = json.load(open(os.path.join(merged, "results.json")))["sources"]
    assert [(s["directory"], s["settings"]) for s in sources] == [(out, 2), (other, 1)]
    assert all("device" in s["environment"] for s in sources)
    assert "W:nf4/rtn" in open(os.path.join(merged, "report.md")).read()
    with pytest.raises(SystemExit, match="no results.json"):
        ptq_script.main(["--merge", str(tmp_path / "nowhere"), "--out", merged])


def test_the_config_sweeps_formats_by_sizes():
    settings = ptq_script.settings_from(type("A", (), {"config": "configs/ptq.py:6m,20m", "checkpoint": ""})())
    per_size = len(ptq_config.WEIGHTS) * len(ptq_config.METHODS) + len(ptq_config.ACTIVATIONS)
    assert len(settings) == 2 * per_size
    assert {s.checkpoint for s in settings} == {"runs/finetune_order/pretrain-6m", "runs/finetune_order/pretrain-20m"}
    for s in settings:
        ptq.Spec(**{f: s[f] for f in ptq_script.SPEC_FIELDS})
    with pytest.raises(ValueError, match="unknown size"):
        ptq_config.get_sweep("7m")
