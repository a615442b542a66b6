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


def test_recipes_filter_keeps_the_baseline(tmp_path):
    out = tmp_path / "gemm.json"
    benchmark_gemm.main(["--small", "--repeats", "1", "--recipes", "^fp8$", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [r["recipe"] for r in rows] == ["bf16", "fp8"] * len(benchmark_gemm.SMALL_SHAPES)
    assert rows[0]["time_vs_bf16"] == 1.0
    try:
        benchmark_gemm.main(["--small", "--recipes", "fp3", "--out", str(out)])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("an unknown recipe label must be an error")
