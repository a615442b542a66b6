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
