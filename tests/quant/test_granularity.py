"""Granularity: parsing, how many scales, and grouping that pads (never truncates) and inverts."""

import numpy as np
import pytest

from lowprec.quant import Granularity

SPECS = {  # spec -> (kind, axes, size)
    "tensor": ("tensor", (), ()), "channel": ("axis", (0,), ()), "token": ("axis", (-1,), ()),
    "axis(0,1)": ("axis", (0, 1), ()), "block(32)": ("block", (-1,), (32,)),
    "block(16,axis=0)": ("block", (0,), (16,)), "tile(16,16)": ("tile", (-2, -1), (16, 16)),
    "tile(128,64,axes=0:1)": ("tile", (0, 1), (128, 64)),
}


@pytest.mark.parametrize("spec", SPECS)
def test_parse_and_str_round_trip(spec):
    g = Granularity.parse(spec)
    assert (g.kind, g.axes, g.size) == SPECS[spec]
    assert Granularity.parse(str(g)) == g
    assert Granularity.parse(g) is g
    hash(g)


@pytest.mark.parametrize("spec", ["blocks(3)", "block(0)", "block(-4)", "tile(16)", "axis()", "block(x)", "rows"])
def test_bad_specs_raise(spec):
    with pytest.raises(ValueError):
        Granularity.parse(spec)


# (spec, shape, number of scales worked out by hand)
COUNTS = [
    ("tensor", (5, 7), 1), ("channel", (5, 7), 7), ("token", (2, 3, 8), 6), ("axis(0,1)", (2, 3, 8), 8),
    ("block(32)", (4, 70), 4 * 3), ("block(32)", (64,), 2), ("block(16,axis=0)", (40, 3), 3 * 3),
    ("tile(16,16)", (40, 50), 3 * 4), ("tile(16,16)", (2, 32, 16), 2 * 2 * 1),
]


@pytest.mark.parametrize("spec,shape,count", COUNTS, ids=str)
def test_groups_count_pad_and_invert(spec, shape, count):
    g = Granularity.parse(spec)
    assert g.num_groups(shape) == count
    x = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)
    xg, axes = g.to_groups(x)
    reduced = np.asarray(xg)
    for a in axes:
        reduced = reduced.max(axis=a, keepdims=True)
    assert reduced.size == count
    # Padding adds zeros only: every element is still there, once.
    flat = np.sort(np.asarray(xg).ravel())
    np.testing.assert_array_equal(flat[flat != 0], x.ravel())
    np.testing.assert_array_equal(np.asarray(g.from_groups(xg, shape)), x)


def test_block_groups_are_consecutive_runs_along_the_axis():
    """block(32) on a row of 70: [0:32], [32:64], [64:70] + 26 zeros of padding."""
    g = Granularity.parse("block(32)")
    x = np.arange(1, 71, dtype=np.float32)[None, :]
    xg = np.asarray(g.to_groups(x)[0])
    assert xg.shape == (1, 3, 32)
    np.testing.assert_array_equal(xg[0, 0], x[0, :32])
    np.testing.assert_array_equal(xg[0, 2, :6], x[0, 64:])
    assert not xg[0, 2, 6:].any()


def test_tile_groups_are_2d_tiles():
    g = Granularity.parse("tile(16,16)")
    x = np.arange(40 * 50, dtype=np.float32).reshape(40, 50)
    xg, axes = g.to_groups(x)
    xg = np.asarray(xg)
    assert xg.shape == (3, 16, 4, 16) and axes == (1, 3)
    np.testing.assert_array_equal(xg[1, :, 2, :], x[16:32, 32:48])
    np.testing.assert_array_equal(xg[2, :8, 3, :2], x[32:40, 48:50])
    assert not xg[2, 8:].any() and not xg[:, :, 3, 2:].any()


def test_along_binds_vectors_and_blocks_to_the_contraction():
    assert Granularity.parse("token").along((0,)) == Granularity("axis", (0,))
    assert Granularity.parse("block(32)").along((1, 2)) == Granularity("block", (2,), (32,))
    assert Granularity.parse("tile(16,16)").along((0,)) == Granularity.parse("tile(16,16)")
