"""The cast-transpose benchmark's arguments (its variants' bits: tests/ops/test_benchmark_gemm.py)."""

import pytest

from experiments import benchmark_transpose


def test_a_block_that_does_not_divide_the_operand_is_an_error():
    with pytest.raises(ValueError, match="--block 48 must divide"):
        benchmark_transpose.main(["--rows", "64", "--cols", "64", "--block", "48", "--repeats", "1"])
