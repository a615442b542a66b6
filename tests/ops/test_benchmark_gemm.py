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
