"""The cast-transpose benchmark: every variant, the library's Pallas kernel among them, gives the
same bits as quantize-then-transpose (checked by the benchmark itself and read back here)."""

import json

import pytest

from experiments import benchmark_transpose


def test_every_variant_gives_the_same_bits(tmp_path):
    out = tmp_path / "transpose.json"
    benchmark_transpose.main(["--rows", "128", "--cols", "192", "--repeats", "1", "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    assert "pallas: both layouts in one kernel" in results
    assert all(r["same_bits"] for name, r in results.items() if name != "copy (bf16)")


def test_a_block_that_does_not_divide_the_operand_is_an_error():
    with pytest.raises(ValueError, match="--block 48 must divide"):
        benchmark_transpose.main(["--rows", "64", "--cols", "64", "--block", "48", "--repeats", "1"])
