"""The XLA flag study: one benchmark per flag set in its own process, compared with the first
set in time and in output bits; a set XLA rejects is reported, not fatal."""

import json

import pytest

from experiments import benchmark_quantize, xla_flags_study as study


def test_flag_sets_side_by_side(tmp_path, capsys):
    rc = study.main(["--out", str(tmp_path), "--bench",
                     "experiments.benchmark_quantize --gib 0.001 --repeats 1 --only 'XLA path|XLA, block amax|per-token'",
                     "--flags", "default=", "--flags", "strict=--xla_cpu_enable_fast_math=false",
                     "--flags", "bogus=--xla_no_such_flag=1"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    sets = summary["sets"]
    assert list(sets) == ["default", "strict", "bogus"]
    assert "Unknown flag" in sets["bogus"]["error"] and sets["bogus"]["returncode"] != 0
    for name in ("default", "strict"):  # each set's own result file, read back
        own = json.loads((tmp_path / f"{name}.json").read_text())["results"]
        assert {k: v["seconds"] for k, v in own.items()} == {k: v["seconds"] for k, v in sets[name]["cases"].items()}
    rows = {r["case"]: r for r in summary["rows"]}
    slices = "mxfp4 XLA, block amax by slices"
    assert set(rows) == {"copy", "amax only (read)", "e2m1fn per-token (scale per row)", benchmark_quantize.XLA_MXFP4,
                         slices}
    mx = rows[benchmark_quantize.XLA_MXFP4]
    # Same quantization (fast math is off by default on the CPU): same bits; the ratio is the time ratio.
    assert mx["strict same bits"] is True
    assert mx["strict vs default"] == pytest.approx(mx["default s"] / mx["strict s"])
    default = json.loads((tmp_path / "default.json").read_text())["results"]
    assert default[slices]["digest"] == default[benchmark_quantize.XLA_MXFP4]["digest"]
    assert "copy" in capsys.readouterr().out


def test_gemm_results_are_read_and_bad_arguments_are_clear(tmp_path):
    payload = {"results": [{"shape": "8x8x8", "recipe": "fp8", "seconds": 0.5}]}
    assert study.cases(payload) == {"8x8x8 fp8": {"seconds": 0.5, "digest": None}}
    with pytest.raises(ValueError, match="not a benchmark"):
        study.cases({"rows": []})
    with pytest.raises(SystemExit):
        study.main(["--out", str(tmp_path), "--bench", "experiments.benchmark_gemm --out x", "--flags", "a="])
    with pytest.raises(SystemExit):
        study.main(["--out", str(tmp_path), "--bench", "experiments.benchmark_gemm", "--flags", "a b=--x"])
    with pytest.raises(SystemExit):
        study.main(["--out", str(tmp_path), "--bench", "experiments.benchmark_gemm", "--flags", "a=", "--flags", "a="])
    with pytest.raises(SystemExit):
        benchmark_quantize.main(["--gib", "0.001", "--only", "nf5", "--out", str(tmp_path / "q.json")])


def test_digest_tells_one_flipped_bit():
    import numpy as np

    x = np.linspace(-3, 3, 4096, dtype=np.float32)
    y = x.copy()
    y.view(np.uint32)[1234] ^= 1
    assert benchmark_quantize.digest(x) == benchmark_quantize.digest(x.copy())
    assert benchmark_quantize.digest(x) != benchmark_quantize.digest(y)
    assert benchmark_quantize.digest((x, 0)) == benchmark_quantize.digest(x)  # a tuple: its quantized tensor
