"""The training benchmark on a CPU: a real step of the tiny model per recipe, ratios to the first
recipe, and with --profile the compiled HLO of each step written beside the JSON."""

import gzip
import json

from experiments import benchmark_train


def test_tiny_model_steps_and_writes_each_steps_hlo(tmp_path):
    out = tmp_path / "train.json"
    benchmark_train.main(["--sizes", "tiny", "--batch", "2", "--seq", "32", "--steps", "2",
                          "--recipes", "bf16,fp8(native_fp8='off')",
                          "--profile", str(tmp_path / "trace"), "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [r["recipe"] for r in rows] == ["bf16", "fp8(native_fp8='off')"]
    assert rows[0]["step_vs_bf16"] == 1.0 and all(r["step_s"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert [r["hlo"] for r in rows] == ["train_tiny_bf16.hlo.txt.gz", "train_tiny_fp8_native_fp8_off.hlo.txt.gz"]
    for r in rows:
        assert gzip.open(tmp_path / r["hlo"], "rt").read().startswith("HloModule")
        copies = r["hlo_copies"]  # layers unrolled (scan_unroll=0): no stacked buffers zero-filled from broadcasts
        assert copies["of_broadcasts"] == 0 and copies["bytes"] >= 0
        assert set(r["kernel_categories_s"]) == {"gemm fp8", "gemm", "attention", "quantization", "optimizer", "other"}
        m = r["memory"]  # the donated train state aliases its outputs
        assert m["peak_bytes"] == m["argument_bytes"] + m["output_bytes"] + m["temp_bytes"] - m["alias_bytes"]
        assert m["peak_bytes"] > m["argument_bytes"] >= m["alias_bytes"] > 0 and m["temp_bytes"] > 0
        assert r["memory_vs_bf16"] == m["peak_bytes"] / rows[0]["memory"]["peak_bytes"]
        # which path ran, from the compiled HLO: on a CPU no FP8 GEMM, every GEMM an HLO dot
        assert r["fp8_path"] == "simulated" and r["fp8_gemms"] == r["fp8_operand_gemms"] == 0
        assert r["gemm_dtypes"] and all(k.startswith("dot(") for k in r["gemm_dtypes"]) and "gemms" not in r
        assert r["fp8_transposes"] == "fused"
    assert sum(rows[0]["gemm_dtypes"].values()) == sum(rows[1]["gemm_dtypes"].values())  # same model, same GEMMs
