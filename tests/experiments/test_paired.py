"""Paired differences: per seed against the baseline over the common seeds, their mean and
range, and the unpaired means over each setting's own seeds."""

import math

from experiments.paired import against, describe, paired

VALUES = {("bf16", 0): 1.00, ("bf16", 1): 1.20, ("fp4", 0): 1.05, ("fp4", 1): 1.22, ("fp4", 2): 1.50,
          ("w4a4", 3): 1.1}


def test_per_seed_differences_mean_range_and_unpaired_means():
    p = paired(VALUES, "fp4", "bf16")
    assert list(p.by_seed) == [0, 1]  # seed 2 has no bf16 run: not paired
    assert math.isclose(p.by_seed[0], 0.05) and math.isclose(p.by_seed[1], 0.02)
    assert math.isclose(p.mean, 0.035) and p.range == (p.by_seed[1], p.by_seed[0])
    # The unpaired means use every seed of each: a seed-2 outlier moves fp4's mean, not the paired one.
    assert math.isclose(p.setting_mean, (1.05 + 1.22 + 1.50) / 3) and math.isclose(p.baseline_mean, 1.10)
    text = describe(p)
    assert text.startswith("fp4 − bf16 paired +0.0350 [+0.0200, +0.0500] (seed 0 +0.0500, seed 1 +0.0200)")
    assert text.endswith("unpaired means 1.2567 vs 1.1000")


def test_no_common_seed_and_every_setting_against_a_baseline():
    none = paired(VALUES, "w4a4", "bf16")
    assert none.by_seed == {} and math.isnan(none.mean) and "no common seed" in describe(none)
    assert [p.setting for p in against(VALUES, "bf16")] == ["fp4", "w4a4"]
