"""Counter-based permutations: bijective, keyed, and sliceable."""

import numpy as np
import pytest

from lowprec.data.permutation import mix, permute


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_is_a_bijection(n):
    assert sorted(permute(np.arange(n), n, key=7).tolist()) == list(range(n))


def test_key_changes_order_and_slices_agree():
    n = 500
    a, b = permute(np.arange(n), n, mix(0, 0)), permute(np.arange(n), n, mix(0, 1))
    assert not np.array_equal(a, b)
    assert np.array_equal(permute(np.arange(100, 130), n, mix(0, 0)), a[100:130])


def test_out_of_range_index_is_an_error():
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        permute(np.array([10]), 10, key=0)
