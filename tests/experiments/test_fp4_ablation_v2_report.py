"""The v2 report's decision rule and paired comparisons."""

import math

import pytest

from configs import fp4_ablation_v2
from experiments import fp4_ablation_v2_report as v2


@pytest.mark.parametrize("diffs, expected", [
    ([0.019, -0.0199], "no effect"),
    ([0.03, 0.05], "effect (setting higher)"),
    ([-0.031, -0.2], "effect (setting lower)"),
    ([0.04, -0.05], "unclear"),   # the seeds disagree in sign
    ([0.025, 0.04], "unclear"),   # one seed between the thresholds
    ([0.01, 0.04], "unclear"),
    ([], "not run"),
])
def test_the_decision_rule(diffs, expected):
    assert v2.verdict(diffs) == expected


def test_comparisons_are_paired_by_seed():
    values = {("a", None): {0: 1.00, 1: 1.10, 2: 5.0}, ("b", None): {0: 1.05, 1: 1.14}}
    row = v2.compare(values, {}, ("b", None), ("a", None))
    assert row["per_seed"] == "s0: +0.0500 s1: +0.0400"  # seed 2 has no partner
    assert math.isclose(row["paired_mean"], 0.045) and row["verdict"] == "effect (setting higher)"
    assert math.isclose(row["baseline_mean"], (1.0 + 1.1 + 5.0) / 3)  # unpaired: all of its own seeds
    diverged = v2.compare(values, {("b", None): "diverged at step 40"}, ("b", None), ("a", None))
    assert diverged["verdict"] == "b diverged at step 40"
    assert v2.compare(values, {}, ("c", 3e-3), ("a", None))["verdict"] == "not run"


def test_every_hypothesis_names_settings_of_the_sweep():
    recipes = {r for sweep in fp4_ablation_v2.SWEEPS.values() for r in sweep}
    for _, _, pairs in v2.HYPOTHESES:
        for setting in (s for pair in pairs for s in pair):
            assert setting[0] in recipes, setting
            assert setting[1] in (None, fp4_ablation_v2.LR_HIGH)
    assert v2.LR_HIGH == fp4_ablation_v2.LR_HIGH


def test_unfinished_runs_are_compared_at_the_last_step_both_reached():
    curves = {("a", None): {0: {250: 1.5, 500: 1.2, 750: 1.0}, 1: {250: 1.6, 500: 1.3}},
              ("b", None): {0: {250: 1.55, 500: 1.25}, 1: {250: 1.64, 500: 1.34, 750: 1.1}}}
    step, at = v2.matched_step(curves, ("b", None), ("a", None))
    assert step == 500 and at[("b", 0)] == 1.25 and at[("a", 1)] == 1.3
    row = v2.compare({}, {}, ("b", None), ("a", None), curves)
    assert row["verdict"] == "unfinished; at step 500: effect (setting higher)"
    assert row["per_seed"] == "s0: +0.0500 s1: +0.0400"
    assert v2.matched_step(curves, ("c", None), ("a", None)) == (None, {})
