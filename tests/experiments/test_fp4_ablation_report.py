"""The FP4 ablation report: every claim of the paper checked from the runs' final losses, with
incomplete, diverged and seed-mixed cases named as such."""

import csv
import json
import math
import os

import pytest

from experiments import fp4_ablation_report as report
from launch import sweep


def _ids(root, sub):
    return {(r.overrides["recipe"], r.overrides["seed"]): r for r in sweep.expand(f"{report.SPEC}:{sub}", root)}


def _run(root, sub, recipe, seed, val, status="done", gpu=None):
    """A finished run of ``recipe`` and ``seed`` in sub-sweep ``sub``: config, metrics, STATUS
    (and a log.txt naming ``gpu``, as the trainer's does when a GEMM has FP8 operands)."""
    r = _ids(root, sub)[(recipe, seed)]
    os.makedirs(r.path, exist_ok=True)
    if gpu:
        with open(os.path.join(r.path, "log.txt"), "w") as f:
            f.write(f"INFO lowprec.ops.native: forward GEMM float8_e4m3fn[8, 8] x float8_e4m3fn[8, 8]: native_fp8 "
                    f"({gpu} has FP8 tensor cores)\n")
    with open(os.path.join(r.path, "config.json"), "w") as f:
        json.dump({"recipe": recipe, "seed": seed, "optim": {"lr": r.overrides.get("optim.lr", 1e-3)},
                   "train": {"log_every": 25}}, f)
    records = [{"step": s, "split": "train", "loss": 2.0 - s / 1000, "tokens": s * 32768.0, "step_time_s": 0.04}
               for s in (25, 50, 75)]
    records.append({"step": 75, "split": "val", "loss": val if math.isfinite(val) else "nan"})
    with open(os.path.join(r.path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in records)
    with open(os.path.join(r.path, "STATUS"), "w") as f:
        f.write(f"{status}\n" if status == "done" else f"{status}\nloss not finite at step 75\n")


@pytest.fixture
def root(tmp_path):
    root = str(tmp_path / "fp4_ablation")
    a = {"bf16": (1.00, 1.04), "fp8": (1.01, 1.03), "w4a4": (1.10, 1.12), "fp4_paper": (1.05, 1.13)}
    for recipe, vals in a.items():
        for seed, v in enumerate(vals):
            _run(root, "a", recipe, seed, v)
    b = {"w4a8": (1.06, 1.05), "w4a8_dge3": (1.05, 1.04), "w4a8_dge5": (1.04, 1.03), "w4a8_dge10": (1.07, 1.06)}
    for recipe, vals in b.items():
        for seed, v in enumerate(vals):
            _run(root, "b", recipe, seed, v)
    c = {"w8a4": (math.nan, 1.2), "w8a4_occ999": (1.10, 1.11), "w8a4_occ99": (1.09, 1.10, 1.11),
         "w8a4_occ97": (1.08, 1.09, 1.10)}  # the last two with the third seed configs/fp4_ablation.py asks of them
    for recipe, vals in c.items():
        for seed, v in enumerate(vals):
            _run(root, "c", recipe, seed, v, status="failed" if math.isnan(v) else "done")
    _run(root, "d", "fp4_wtensor_atensor", 0, 1.00)
    return root


def test_claims_are_checked_from_the_runs(root, tmp_path):
    rows = {(r["sweep"], r["claim"]): r for r in report.write(root, str(tmp_path / "out"))}
    assert len(rows) == len(report.CLAIMS)
    got = {k: v["outcome"] for k, v in rows.items()}
    # (a): fp8 0.01 above bf16 with a 0.02 half-range: ≈ holds; the full method 0.07 above: it does not.
    assert got[("a", "FP8 ≈ BF16")] == "reproduced"
    assert got[("a", "the full method (W4A4 + DGE + OCC) ≈ BF16")] == "not reproduced"
    # fp4_paper below w4a4 in the mean (1.09 vs 1.11) but above it for seed 1: mixed across seeds.
    assert got[("a", "plain W4A4 is worse than the full method")] == "reproduced (mixed across seeds)"
    assert ("per seed +0.0500, -0.0100; paired mean +0.0200, range [-0.0100, +0.0500]"
            in rows[("a", "plain W4A4 is worse than the full method")]["evidence"])
    assert got[("b", "W4A8: DGE (k = 5) beats direct quantization (STE)")] == "reproduced"
    assert got[("b", "W4A8: k = 5 beats k = 3 and k = 10")] == "reproduced"
    # (c): direct W8A4 has a run that diverged: worse than every OCC setting that finished.
    assert got[("c", "W8A4: OCC beats direct quantization (which diverges in the paper)")] == "reproduced"
    assert got[("c", "W8A4 with OCC: the smaller alpha, the lower the loss")] == "reproduced"
    assert got[("c", "W8A4: compensation helps at every alpha")].startswith("incomplete (w8a4_clamp97, w8a4_clamp99")
    # (d): one seed of one cell finished: its gap to the full method over that seed alone too.
    d = rows[("d", "vector-wise weights (channel) and activations (token) are best")]
    assert d["outcome"].startswith("incomplete") and "(seed 0 alone: -0.0500)" in d["evidence"]
    assert got[("lr", "at 3x the learning rate, the full method beats plain W4A4")] == \
        "incomplete (fp4_paper, w4a4 not finished)"  # the lr runs are their own runs, not (a)'s
    # (e) asks a third seed of fp4_paper, which (a) does not: incomplete in (e) only.
    assert got[("e", "E2M1, the element format the paper trains with, beats E1M2 and E3M0")] == \
        "incomplete (fp4_e1m2, fp4_e3m0, fp4_paper not finished)"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| fp4_paper | 2 of 3 | 1.0900 ± 0.0400 | 1.0500, 1.1300 |" in md  # the (e) table
    with open(tmp_path / "out" / "claims.csv") as f:
        assert [r["outcome"] for r in csv.DictReader(f)] == [rows[(s, c)]["outcome"] for s, c, _ in report.CLAIMS]
    assert "| w8a4 | 2 of 2 | diverged or failed | 1.2000 |" in md
    assert "| fp4_paper | 2 of 2 | 1.0900 ± 0.0400 | 1.0500, 1.1300 |" in md
    for line in md.splitlines():  # no cell breaks a table row apart
        if line.startswith("| a |"):
            assert line.count(" | ") == 3


def test_a_reversed_ordering_is_not_reproduced(root, tmp_path):
    # DGE k = 5 now behind STE for both seeds; k = 3 ahead of it in the mean but behind for seed 0.
    for recipe, vals in {"w4a8_dge5": (1.08, 1.07), "w4a8_dge3": (1.10, 1.02), "w4a8_dge10": (1.09, 1.08)}.items():
        for seed, v in enumerate(vals):
            _run(root, "b", recipe, seed, v)
    rows = {(r["sweep"], r["claim"]): r["outcome"] for r in report.write(root, str(tmp_path))}
    assert rows[("b", "W4A8: DGE (k = 5) beats direct quantization (STE)")] == "not reproduced"
    assert rows[("b", "W4A8: k = 5 beats k = 3 and k = 10")] == "not reproduced (mixed across seeds)"
    for seed, v in enumerate((1.09, 1.08)):  # k = 3 behind k = 5 for no seed now: a clear reversal
        _run(root, "b", "w4a8_dge3", seed, v - 0.05)
    rows = {(r["sweep"], r["claim"]): r["outcome"] for r in report.write(root, str(tmp_path))}
    assert rows[("b", "W4A8: k = 5 beats k = 3 and k = 10")] == "not reproduced"


def test_figures_are_the_sweep_reports_of_the_started_sub_sweeps(root, tmp_path):
    out = tmp_path / "out"
    report.main([root, "--out", str(out), "--figures"])
    # (d) and (e) have started: their fp4_paper cells are (a)'s runs; parts and lr have not.
    assert sorted(d for d in os.listdir(out) if os.path.isdir(out / d)) == ["a", "b", "c", "d", "e"]
    text = (out / "b" / "report.md").read_text()
    assert "recipe=w4a8_dge10" in text and "recipe=bf16" not in text
    assert "([report](b/report.md))" in (out / "report.md").read_text()
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "missing")])


def test_comparisons_across_gpus_say_so(root, tmp_path):
    for seed, v in enumerate((1.05, 1.13)):
        _run(root, "a", "fp4_paper", seed, v, gpu="NVIDIA H100 80GB HBM3")
        _run(root, "a", "w4a4", seed, v + 0.05, gpu="NVIDIA H200")
        _run(root, "a", "fp8", seed, v, gpu="NVIDIA H200")
    rows = {(r["sweep"], r["claim"]): r["evidence"] for r in report.write(root, str(tmp_path))}
    assert rows[("a", "plain W4A4 is worse than the full method")].endswith(
        "(on different GPUs: fp4_paper NVIDIA H100 80GB HBM3; w4a4 NVIDIA H200)")
    assert "different GPUs" not in rows[("a", "FP8 ≈ BF16")]  # bf16's logs name no GPU: nothing to compare

