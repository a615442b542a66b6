"""experiments.benchmark_gemm --small runs on a CPU and writes its JSON."""

import json

from experiments import benchmark_gemm


def test_small_benchmark_writes_results(tmp_path, capsys):
    out = tmp_path / "gemm.json"
    benchmark_gemm.main(["--small", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"command", "device", "date", "jax", "jaxlib", "flax"} <= set(result["environment"])
    rows = result["results"]
    assert {r["recipe"] for r in rows} == set(benchmark_gemm.RECIPES)
    assert len(rows) == len(benchmark_gemm.RECIPES) * len(benchmark_gemm.SMALL_SHAPES)
    assert all(r["seconds"] > 0 and r["fp8_path"] == "simulated" and r["gemms"] for r in rows)
    assert set(result["occ_quantile_seconds"]) == {"shape", "exact", "approx"}
    table = capsys.readouterr().out.splitlines()[-len(rows) - 2:]  # the table comes last
    assert "FP8 GEMMs" in table[0] and table[-1].startswith("OCC quantile alone")


def test_recipes_filter_keeps_the_baseline(tmp_path, capsys):
    out = tmp_path / "gemm.json"
    benchmark_gemm.main(["--small", "--repeats", "1", "--recipes", "^fp8$", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [r["recipe"] for r in rows] == ["bf16", "fp8"] * len(benchmark_gemm.SMALL_SHAPES)
    assert rows[0]["time_vs_bf16"] == 1.0
    assert all(r["fp8_transposes"] == "fused" for r in rows)  # "auto" on a CPU
    assert "256x256x256 fp8: " in capsys.readouterr().out  # progress: each case as it is timed
    benchmark_gemm.main(["--small", "--repeats", "1", "--recipes", "^fp8$", "--shapes", "^512", "--out", str(out)])
    assert [r["shape"] for r in json.loads(out.read_text())["results"]] == ["512x128->128"] * 2
    try:
        benchmark_gemm.main(["--small", "--recipes", "fp3", "--out", str(out)])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("an unknown recipe label must be an error")


def test_a_failing_case_is_recorded_and_the_rest_still_run(tmp_path, capsys, monkeypatch):
    real = benchmark_gemm.layer_step

    def layer_step(recipe, *args):
        if recipe is not None and recipe.fp8_transposes == "pallas":
            raise RuntimeError("kernel rejected by this device")
        return real(recipe, *args)

    monkeypatch.setattr(benchmark_gemm, "layer_step", layer_step)
    out = tmp_path / "gemm.json"
    benchmark_gemm.main(["--small", "--repeats", "1", "--recipes", "^fp8", "--out", str(out)])
    rows = {r["recipe"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["fp8 (pallas cast-transpose)"]["error"] == "RuntimeError: kernel rejected by this device"
    assert rows["fp8"]["seconds"] > 0 and rows["fp8 (delayed scaling)"]["time_vs_bf16"] > 0
    printed = capsys.readouterr().out
    assert "256x256x256 fp8 (pallas cast-transpose): failed: RuntimeError: kernel rejected" in printed
    table = printed[printed.index("QuantDense forward+backward on"):].splitlines()
    assert any(line.startswith("256x256x256") and "pallas" in line and "failed: RuntimeError" in line
               for line in table)  # and in the table


def test_transpose_benchmark_variants_give_the_same_bits(tmp_path):
    import numpy as np

    from experiments import benchmark_transpose

    out = tmp_path / "t.json"
    benchmark_transpose.main(["--rows", "64", "--cols", "96", "--repeats", "1", "--block", "32", "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"copy (bf16)", *benchmark_transpose.variants()}
    assert all(r["same_bits"] and r["seconds"] > 0 for k, r in results.items() if k != "copy (bf16)")
    # The reference itself, independently: E4M3 of x * 16 through ml_dtypes, transposed.
    import jax
    import jax.numpy as jnp
    import ml_dtypes

    x = jax.random.normal(jax.random.key(0), (64, 96), jnp.bfloat16)
    ref = (np.asarray(x).astype(np.float32) * 16).astype(ml_dtypes.float8_e4m3fn).T
    fused = benchmark_transpose.variants()["fused: transpose(quantize(x))"](x, jnp.float32(16.0))
    np.testing.assert_array_equal(np.asarray(fused).view(np.uint8), ref.view(np.uint8))


def _run_json(tmp_path, *argv):
    out = tmp_path / "gemm.json"
    benchmark_gemm.main(["--small", "--repeats", "1", "--out", str(out), *argv])
    return json.loads(out.read_text())


def test_rows_record_peak_memory_and_gemm_dtypes_from_the_hlo(tmp_path):
    result = _run_json(tmp_path, "--recipes", "^fp8$|fp4_paper \\(approx quantile", "--shapes", "^256")
    rows = {r["recipe"]: r for r in result["results"]}
    assert list(rows) == ["bf16", "fp8", "fp4_paper (approx quantile)"]
    operands = 3 * 256 * 256 * 2  # W, x and dy in bf16
    for r in rows.values():
        m = r["memory"]
        assert m["method"].startswith("xla memory_analysis") and "allocator" not in m  # no counters on a CPU
        assert m["argument_bytes"] == operands and m["output_bytes"] >= operands  # y, dx, dW
        assert m["peak_bytes"] == m["argument_bytes"] + m["output_bytes"] + m["temp_bytes"] - m["alias_bytes"] > 0
        assert r["memory_vs_bf16"] == m["peak_bytes"] / rows["bf16"]["memory"]["peak_bytes"]
        assert r["framework"] == "lowprec" and r["baseline"] == "bf16"
    # On a CPU the FP8 GEMMs are simulated: three dots (y, dx, dW) on upcast operands, none on f8 values.
    assert rows["fp8"]["gemm_dtypes"] == {"dot(f32,f32)": 3} and rows["fp8"]["fp8_operand_gemms"] == 0
    assert rows["fp8"]["fp8_path"] == "simulated" and rows["fp8"]["fp8_gemms"] == 0
    assert sum(rows["fp4_paper (approx quantile)"]["gemm_dtypes"].values()) == 5  # + the OCC residual's GEMMs
    assert "peer_summary" not in result and all(r["framework"] == "lowprec" for r in result["results"])


def test_gemm_report_counts_cublaslt_fp8_gemms_by_operand_dtype():
    from experiments.common import gemm_report

    hlo = """HloModule m
ENTRY %e {
  %p0 = f8e4m3fn[64,32]{1,0} parameter(0)
  %p1 = f8e4m3fn[16,32]{1,0} parameter(1)
  %g = f8e5m2[64,16]{1,0} parameter(2)
  %s = f32[] parameter(3)
  %c1 = (bf16[64,16]{1,0}, s8[4194304]{0}) custom-call(%p0, %p1, %s, %s), custom_call_target="__cublas$lt$matmul$f8"
  %c2 = (bf16[64,32]{1,0}, s8[4194304]{0}) custom-call(%g, %p1, %s, %s), custom_call_target="__cublas$lt$matmul$f8"
  %q = bf16[64,32]{1,0} parameter(4)
  %c3 = (bf16[64,64]{1,0}, s8[4194304]{0}) custom-call(%q, %q), custom_call_target="__cublas$gemm"
}"""
    report = gemm_report(hlo)
    assert report["fp8_path"] == "native" and report["fp8_gemms"] == 2 and report["fp8_operand_gemms"] == 2
    assert report["gemm_dtypes"] == {"__cublas$lt$matmul$f8(f8e4m3fn,f8e4m3fn,f32,f32)": 1,
                                     "__cublas$lt$matmul$f8(f8e5m2,f8e4m3fn,f32,f32)": 1,
                                     "__cublas$gemm(bf16,bf16)": 1}


def test_torch_rows_without_torch_are_skipped_with_a_reason(tmp_path, monkeypatch, caplog):
    import importlib.util

    from experiments import torch_peer

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("torch") else real(name, *a))
    result = _run_json(tmp_path, "--recipes", "^fp8$", "--shapes", "^512", "--torch")
    rows = result["results"]
    assert [r["recipe"] for r in rows] == ["bf16", "fp8", *torch_peer.RECIPES]
    for r in rows[2:]:
        assert r["framework"] == "torch" and r["skipped"] == "torch is not installed" and "seconds" not in r
        assert r["torch"] is None and r["torchao"] is None and r["baseline"] == "torch bf16"
    assert [r["float8_recipe"] for r in rows[2:]] == [None, "tensorwise", "rowwise"]
    assert "512x128->128 torchao float8 rowwise: skipped: torch is not installed" in caplog.text
    (summary,) = result["peer_summary"]
    assert summary["fp8_vs_torchao_best_float8"]["ahead"] is None and summary["torch_bf16"] is None
    assert summary["fp8_vs_torchao_best_float8"]["lowprec"]["seconds"] == rows[1]["seconds"]
    assert set(summary["torch_rows_missing"]) == set(torch_peer.RECIPES)
    assert result["environment"]["torch"] is None


def test_float8_needs_torchao_cuda_and_fp8_tensor_cores(monkeypatch):
    import importlib.util
    import sys
    import types

    from experiments import torch_peer

    state = {"cuda": False, "capability": (9, 0), "torchao": False}
    cuda = types.SimpleNamespace(is_available=lambda: state["cuda"], get_device_capability=lambda: state["capability"])
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="2.11.0", cuda=cuda))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        object() if name == "torch" or (name == "torchao" and state["torchao"]) else
        None if name == "torchao" else real(name, *a)))
    assert torch_peer.unavailable(None, "cpu") is None  # torch bf16 runs where JAX does, here the CPU
    assert torch_peer.unavailable(None, "gpu") == "JAX runs on a GPU but torch 2.11.0 sees no CUDA device"
    assert torch_peer.unavailable("rowwise", "cpu").startswith("torchao is not installed")
    state["torchao"] = True
    assert torch_peer.unavailable("tensorwise", "cpu").startswith("torchao float8 training needs a CUDA GPU")
    state["cuda"], state["capability"] = True, (8, 0)
    assert torch_peer.unavailable("tensorwise", "gpu") == \
        "torchao float8 needs compute capability >= (8, 9); this GPU has (8, 0)"
    state["capability"] = (9, 0)
    assert torch_peer.unavailable("tensorwise", "gpu") is None and torch_peer.unavailable("rowwise", "gpu") is None


def _timed_row(shape, recipe, seconds, framework="lowprec"):
    return {"shape": shape, "recipe": recipe, "framework": framework, "seconds": seconds}


def test_peer_summary_compares_fp8_with_torchaos_faster_float8(monkeypatch):
    rows = [_timed_row("a", "bf16", 3.0), _timed_row("a", "fp8", 2.0), _timed_row("a", "torch bf16", 3.1, "torch"),
            _timed_row("a", "torchao float8 tensorwise", 2.5, "torch"),
            _timed_row("a", "torchao float8 rowwise", 1.5, "torch"),
            _timed_row("b", "bf16", 3.0), _timed_row("b", "fp8", 2.0), _timed_row("b", "torch bf16", 3.1, "torch"),
            _timed_row("b", "torchao float8 tensorwise", 2.4, "torch"),
            {"shape": "b", "recipe": "torchao float8 rowwise", "framework": "torch", "error": "RuntimeError: x"}]
    a, b = benchmark_gemm.peer_summary(rows)
    assert a["fp8_vs_torchao_best_float8"]["torchao"] == {"recipe": "torchao float8 rowwise", "seconds": 1.5}
    assert a["fp8_vs_torchao_best_float8"]["ahead"] is False and "torch_rows_missing" not in a
    assert b["fp8_vs_torchao_best_float8"]["ahead"] is True
    assert b["fp8_vs_torchao_best_float8"]["lowprec_time_vs_torchao"] == 2.0 / 2.4
    assert b["torch_rows_missing"] == {"torchao float8 rowwise": "RuntimeError: x"}
    assert a["torch_bf16"]["seconds"] == 3.1 and a["lowprec_bf16"]["seconds"] == 3.0
    rowwise = benchmark_gemm.ROWWISE
    monkeypatch.setitem(benchmark_gemm.RECIPES, rowwise, None)  # as if lowprec registered fp8_rowwise
    (c,) = benchmark_gemm.peer_summary([_timed_row("c", rowwise, 1.0), _timed_row("c", "torchao float8 rowwise", 1.2)])
    assert c["rowwise_vs_torchao_rowwise"]["ahead"] is True and "note" not in c["rowwise_vs_torchao_rowwise"]


def test_without_a_rowwise_recipe_the_summary_says_so():
    import pytest

    from lowprec.ops import recipes

    if "fp8_rowwise" in recipes.names():
        pytest.skip("lowprec registers fp8_rowwise: benchmark_gemm times it as " + benchmark_gemm.ROWWISE)
    assert benchmark_gemm.ROWWISE not in benchmark_gemm.RECIPES
    (s,) = benchmark_gemm.peer_summary([_timed_row("a", "fp8", 1.0), _timed_row("a", "torchao float8 rowwise", 1.2)])
    assert s["rowwise_vs_torchao_rowwise"]["ahead"] is None and "fp8_rowwise" in s["rowwise_vs_torchao_rowwise"]["note"]


def test_torch_bf16_row_runs_where_torch_is_installed():
    import pytest

    torch = pytest.importorskip("torch")
    from experiments import torch_peer

    row = torch_peer.run_row("torch bf16", "64x32->16", (64, 32, 16), 2, "cpu")
    assert row["seconds"] > 0 and row["module"] == "Linear" and row["device"] == "cpu"
    assert row["torch"] == torch.__version__ and row["float8_recipe"] is None and row["timer"] == "wall clock"
    skipped = torch_peer.run_row("torchao float8 tensorwise", "64x32->16", (64, 32, 16), 2, "cpu")
    assert "seconds" not in skipped and skipped["skipped"]  # torchao float8 needs CUDA (or torchao is missing)
