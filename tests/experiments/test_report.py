"""experiments.report on a real tiny sweep: 2 recipes × 2 seeds of the smoke config trained once
(plus a copy made to diverge and a run that failed before logging), checked against numpy
computations straight from the runs' files."""

import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap

import matplotlib.image
import numpy as np
import pytest

from experiments import report
from experiments.reporting import axes
from experiments.reporting.summary import Setting

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = "configs/lm.py:smoke"
# fp32 and one quantized GEMM per block (the MLP down projection) keep compilation short.
BASE = {"policy": "fp32", "recipe_rules": (("lm_head", "bf16"), ("attn|gate|up", "bf16")), "mesh.devices": 1,
        "train.steps": 6, "train.log_every": 1, "train.eval_every": 3, "train.eval_batches": 1,
        "train.checkpoint_every": 100, "train.telemetry_every": 6, "train.progress": False}
NAN_FROM = 4  # the diverged copy's loss is NaN from this step on
NAN_REASON = "NonFiniteLoss: loss is nan at step 4 (checked every 1 steps); first non-finite: layer 0 MLP output"
OOM_REASON = "JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17.26GiB"

# Trains runs with lowprec.train.loop.train in a fresh interpreter: one CPU device, and a
# compilation cache that lets the second seed of a recipe reuse the first one's programs.
TRAIN = textwrap.dedent("""
    import json, sys
    from configs import lm
    from lowprec.train import loop
    base, runs = json.loads(sys.argv[1])
    for workdir, overrides in runs:
        cfg = lm.get_config("smoke")
        for path, value in {**base, **overrides}.items():
            if isinstance(value, list):  # JSON made the rules' tuples lists
                value = tuple(tuple(v) for v in value)
            *parents, leaf = path.split(".")
            node = cfg
            for p in parents:
                node = node[p]
            node[leaf] = value
        loop.train(cfg, workdir)
""")


def run_id(overrides: dict) -> str:
    digest = hashlib.sha256(json.dumps({**BASE, **overrides}, sort_keys=True).encode()).hexdigest()[:8]
    return "_".join(f"{k}-{v}" for k, v in overrides.items()) + f"-{digest}"


def command(root: str, rid: str, overrides: dict) -> list[str]:
    flags = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
             for k, v in {**BASE, **overrides}.items()]
    return [sys.executable, "-m", "experiments.train", "--config", SPEC, "--workdir", os.path.join(root, rid)] + flags


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """runs/<sweep>: bf16 and fp8 × seeds 0, 1 trained; fp8 seed 2 a copy whose loss goes NaN at
    step 4 (STATUS failed); bf16 seed 2 failed before its first record; a manifest of all six."""
    root = str(tmp_path_factory.mktemp("runs") / "sweep")
    trained = [{"recipe": r, "seed": s} for r in ("bf16", "fp8") for s in (0, 1)]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=os.path.join(root, ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)
    jobs = [(os.path.join(root, run_id(o)), o) for o in trained]
    done = subprocess.run([sys.executable, "-c", TRAIN, json.dumps([BASE, jobs])], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.rmtree(os.path.join(root, ".jax_cache"))

    nan_run, oom_run = {"recipe": "fp8", "seed": 2}, {"recipe": "bf16", "seed": 2}
    source = os.path.join(root, run_id({"recipe": "fp8", "seed": 0}))
    shutil.copytree(source, os.path.join(root, run_id(nan_run)), ignore=shutil.ignore_patterns("checkpoints"))
    _edit_copy(os.path.join(root, run_id(nan_run)), seed=2)
    os.makedirs(os.path.join(root, run_id(oom_run)))
    shutil.copy(os.path.join(root, run_id({"recipe": "bf16", "seed": 0}), "config.json"),
                os.path.join(root, run_id(oom_run)))
    _set_seed(os.path.join(root, run_id(oom_run)), 2)
    with open(os.path.join(root, run_id(oom_run), "STATUS"), "w") as f:
        f.write(f"failed\n{OOM_REASON}\n")

    everything = trained + [nan_run, oom_run]
    manifest = {"config": SPEC, "created": "2026-01-01T00:00:00+00:00", "axes": ["recipe", "seed"],
                "runs": [{"id": run_id(o), "overrides": o, "command": command(root, run_id(o), o)} for o in everything],
                "versions": {"python": "3.x", "jax": "0.test"}, "git": "0123456789abcdef0123456789abcdef01234567"}
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return root


def _set_seed(path, seed):
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["seed"] = seed
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def _edit_copy(path, seed):
    """The copy's train and val losses become "nan" (as the metrics writer stores them) from NAN_FROM on."""
    _set_seed(path, seed)
    lines = open(os.path.join(path, "metrics.jsonl")).read().splitlines()
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for line in lines:
            r = json.loads(line)
            if r["split"] in ("train", "val") and r["step"] >= NAN_FROM:
                r["loss"] = "nan"
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(path, "STATUS"), "w") as f:
        f.write(f"failed\n{NAN_REASON}\n")


@pytest.fixture(scope="module")
def built(sweep, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("report"))
    report.build(sweep, out=out)
    return sweep, out


# ---- independent references, straight from the files ----
def records(root, rid, split):
    path = os.path.join(root, rid, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = [json.loads(line) for line in open(path)]
    return [r for r in rows if r["split"] == split]


def final_train(root, rid):
    losses = np.array([float(r["loss"]) for r in records(root, rid, "train")])
    if not len(losses):
        return math.nan
    k = max(1, -(-len(losses) // 20))  # last 5%, rounded up
    return float(losses[-k:].mean())


def final_val(root, rid):
    losses = [float(r["loss"]) for r in records(root, rid, "val")]
    return losses[-1] if losses else math.nan


def mean_half_range(values):
    v = np.array([x for x in values if np.isfinite(x)])
    return v.mean(), np.ptp(v) / 2, len(v)


def median_step(root, rid):
    times = [r["step_time_s"] for r in records(root, rid, "train")][1:]  # the first record holds compilation
    return float(np.median(times))


def table_rows(text, section):
    """{first cell: cells} of the first table after the heading ``section``."""
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in body.splitlines()
            if line.startswith("| ")]
    return {row[0]: row for row in rows[1:]}


def parse_pm(cell):
    m = re.fullmatch(r"([-\d.]+) ± ([-\d.]+)(?: \((\d+) of (\d+)\))?", cell)
    assert m, cell
    return float(m.group(1)), float(m.group(2)), int(m.group(3)) if m.group(3) else None


def manifest_ids(root):
    return [r["id"] for r in json.load(open(os.path.join(root, "manifest.json")))["runs"]]


# ---- tests ----
def test_report_lists_every_run_and_links_its_figures(built):
    root, out = built
    text = open(os.path.join(out, "report.md")).read()
    for rid in manifest_ids(root):
        assert f"`{rid}`" in text
    assert SPEC in text and "0123456789abcdef0123456789abcdef01234567" in text and "jax 0.test" in text
    assert "device cpu" in text  # the runs' logs name the device they ran on
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(links) == {"loss.png", "final.png", "telemetry.png"}
    for name in links:
        image = matplotlib.image.imread(os.path.join(out, name))
        height, width = image.shape[:2]
        assert 300 <= width <= 1600 and height >= 200, (name, image.shape)
        assert image[..., :3].std() > 0.05, name  # not a blank canvas


def test_setting_table_is_mean_and_half_range_of_the_runs(built):
    root, out = built
    rows = table_rows(open(os.path.join(out, "report.md")).read(), "Results")
    for recipe in ("bf16", "fp8"):
        ids = [run_id({"recipe": recipe, "seed": s}) for s in (0, 1, 2)]
        row = rows[f"recipe={recipe}"]
        assert row[1] == "0, 1, 2"
        for cell, fn in ((row[2], final_train), (row[3], final_val)):
            mean, half, n = mean_half_range([fn(root, rid) for rid in ids])
            got_mean, got_half, got_n = parse_pm(cell)
            assert n == 2 and got_n == 2  # the third seed diverged or never logged
            assert abs(got_mean - mean) <= 5e-5 and abs(got_half - half) <= 5e-5, (cell, mean, half)
    assert rows["recipe=bf16"][-1] == "2 done, 1 failed" and rows["recipe=fp8"][-1] == "2 done, 1 failed"
    assert rows["recipe=bf16"][4] == f"{6 * 8 * 64 / 1e3:.3g}k"  # 6 steps of 8 sequences of 64 tokens


def test_step_time_ratio_to_a_chosen_baseline(sweep, tmp_path):
    report.build(sweep, out=str(tmp_path), baseline="recipe=fp8", x="time")
    rows = table_rows(open(tmp_path / "report.md").read(), "Results")
    medians = {r: float(np.median([median_step(sweep, run_id({"recipe": r, "seed": s})) for s in (0, 1, 2)
                                   if records(sweep, run_id({"recipe": r, "seed": s}), "train")]))
               for r in ("bf16", "fp8")}
    assert rows["recipe=fp8"][7] == "1.00×"
    assert rows["recipe=bf16"][7] == f"{medians['bf16'] / medians['fp8']:.2f}×"
    assert rows["recipe=bf16"][6] == f"{medians['bf16'] * 1e3:.1f} ms"


def test_summary_csv_has_one_matching_row_per_run(built):
    root, out = built
    with open(os.path.join(out, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == manifest_ids(root)
    for r in rows:
        assert r["recipe"] in ("bf16", "fp8") and r["seed"] in ("0", "1", "2")
        expected = final_train(root, r["run"])
        got = float(r["final_train_loss"])
        assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected, rel=1e-12)
        expected_val = final_val(root, r["run"])
        assert math.isnan(expected_val) == math.isnan(float(r["final_val_loss"]))
        train = records(root, r["run"], "train")
        if train:
            assert int(r["last_step"]) == 6 and float(r["tokens"]) == train[-1]["tokens"]
        status = open(os.path.join(root, r["run"], "STATUS")).read().split()[0]
        assert r["status"] == status


def test_diverged_and_failed_runs_are_listed_with_step_and_reason(built):
    root, out = built
    rows = table_rows(open(os.path.join(out, "report.md")).read(), "Divergence and failures")
    assert set(rows) == {f"`{run_id({'recipe': 'fp8', 'seed': 2})}`", f"`{run_id({'recipe': 'bf16', 'seed': 2})}`"}
    nan_row = rows[f"`{run_id({'recipe': 'fp8', 'seed': 2})}`"]
    assert nan_row[3] == str(NAN_FROM) and "loss not finite" in nan_row[4] and "NonFiniteLoss" in nan_row[5]
    oom_row = rows[f"`{run_id({'recipe': 'bf16', 'seed': 2})}`"]
    assert oom_row[2] == "failed" and oom_row[3] == "before the first record" and "RESOURCE_EXHAUSTED" in oom_row[5]


def test_telemetry_table_matches_the_records(built):
    root, out = built
    rows = table_rows(open(os.path.join(out, "report.md")).read(), "Numerics telemetry")
    assert not any(k.startswith("recipe=bf16") for k in rows)  # bf16 quantizes nothing: no telemetry
    fp8 = [row for row in (line for line in open(os.path.join(out, "report.md")).read().splitlines()
                           if line.startswith("| recipe=fp8 | fwd_act |"))]
    assert len(fp8) == 1
    cells = [c.strip() for c in fp8[0].strip().strip("|").split(" | ")]
    ids = [run_id({"recipe": "fp8", "seed": s}) for s in (0, 1, 2)]
    for column, stat, factor, digits in ((4, "saturated", 100, 4), (6, "flushed", 100, 4), (7, "sqnr_db", 1, 1),
                                          (8, "max_over_std", 1, 1), (9, "kurtosis", 1, 1)):
        per_run = [np.mean([v for r in records(root, rid, "telemetry") for k, v in r.items()
                            if k.endswith(f"/fwd_act/{stat}")]) for rid in ids]
        assert float(cells[column]) == pytest.approx(np.mean(per_run) * factor, abs=0.6 * 10 ** -digits)


def test_root_without_manifest_infers_axes(sweep, tmp_path):
    root = str(tmp_path / "sweep")
    shutil.copytree(sweep, root, ignore=shutil.ignore_patterns("manifest.json", "checkpoints", "tensorboard"))
    report.build(root)
    with open(os.path.join(root, "summary.csv")) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[2:4] == ["recipe", "seed"] and "policy" not in reader.fieldnames
    assert sorted(r["run"] for r in rows) == sorted(manifest_ids(sweep))
    text = open(os.path.join(root, "report.md")).read()
    assert "no manifest.json" in text and os.path.exists(os.path.join(root, "loss.png"))


def test_root_without_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no runs under .*manifest.json.*config.json"):
        report.build(str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path / "empty")])
    assert e.value.code == 2 and "no runs under" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="not a directory"):
        report.build(str(tmp_path / "missing"))


def test_bad_group_by_and_baseline_name_the_choices(sweep, tmp_path):
    with pytest.raises(ValueError, match="--group-by: 'lr' is not an axis of this sweep; axes: recipe"):
        report.build(sweep, out=str(tmp_path), group_by="lr")
    with pytest.raises(ValueError, match="--baseline recipe=fp16 matches no setting; settings: recipe=bf16"):
        report.build(sweep, out=str(tmp_path), baseline="recipe=fp16")
    with pytest.raises(ValueError, match="--x 'flops' is not known; known: tokens, step, time"):
        report.build(sweep, out=str(tmp_path), x="flops")


def test_two_axes_give_a_panel_per_value_of_the_first_and_baselines_per_panel():
    settings = [Setting({"model.size": size, "recipe": r}, []) for size in ("20m", "125m") for r in ("bf16", "fp8")]
    lines, panel_axes = axes.split_axes(["model.size", "recipe"], None)
    assert (lines, panel_axes) == (["recipe"], ["model.size"])
    panels = axes.panels(settings, panel_axes)
    assert {title: [s.values["recipe"] for s in group] for title, group in panels.items()} == {
        "model.size=20m": ["bf16", "fp8"], "model.size=125m": ["bf16", "fp8"]}
    base = axes.baselines(settings, None, lines)  # default: each panel's first line
    assert [base[s.key].values for s in settings] == [settings[0].values] * 2 + [settings[2].values] * 2
    base = axes.baselines(settings, axes.parse_baseline("size=20m,recipe=fp8", ["model.size", "recipe"]), lines)
    assert all(base[s.key] is settings[1] for s in settings)
    lines, panel_axes = axes.split_axes(["model.size", "recipe"], "size")
    assert (lines, panel_axes) == (["model.size"], ["recipe"])


def test_only_reports_the_matching_runs_with_the_manifest_record(sweep, tmp_path):
    out = str(tmp_path / "fp8")
    report.build(sweep, out=out, only="recipe-fp8")
    with open(os.path.join(out, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    expected = [rid for rid in manifest_ids(sweep) if "recipe-fp8" in rid]
    assert len(expected) == 3 and sorted(r["run"] for r in rows) == sorted(expected)
    text = open(os.path.join(out, "report.md")).read()
    assert "0123456789abcdef" in text  # the manifest's git commit is still reported
    assert "recipe=bf16" not in text
    assert "axes | `seed` (seeds)" in text  # recipe no longer varies among the runs kept
    with pytest.raises(ValueError, match="--only 'recipe-fp16' matches none of the 6 run ids"):
        report.build(sweep, out=out, only="recipe-fp16")
    with pytest.raises(ValueError, match="not a regular expression"):
        report.build(sweep, out=out, only="recipe-(")


def test_the_commits_runs_were_trained_at_come_from_their_runner_logs(tmp_path):
    from experiments.reporting import load, markdown
    logs = {"old": ["started on slot 0 (CPU)"],  # launched before the runner recorded commits
            "resumed": ["started on slot 1 (CPU) at git aaaaaaa1111", "ended with exit code 0, STATUS running",
                        "started on slot 0 (CPU) at git bbbbbbb2222", "started on slot 0 (CPU) at git bbbbbbb2222"],
            "new": ["started on slot 0 (CUDA_VISIBLE_DEVICES=0) at git bbbbbbb2222"]}
    runs = []
    for name, lines in logs.items():
        os.makedirs(tmp_path / name)
        (tmp_path / name / "runner.log").write_text("".join(f"2026-12-03T10:00:00 host pid 1: {x}\n" for x in lines))
        runs.append(load.Run(name, str(tmp_path / name), {}, {}, "done", "", [], [], [], "",
                             load.started_at(str(tmp_path / name))))
    assert [r.commits for r in runs] == [(), ("aaaaaaa1111", "bbbbbbb2222"), ("bbbbbbb2222",)]
    assert load.started_at(str(tmp_path / "missing")) == ()
    assert markdown.trained_at(runs) == ("; runs trained at: `aaaaaaa` (1 run), `bbbbbbb` (2 runs), not recorded "
                                         "(1 run, launched before the runner recorded it)")
    assert markdown.trained_at(runs[:1]) == ""  # nothing recorded: nothing claimed


def test_devices_are_read_from_either_log_line():
    from experiments.reporting import markdown
    new = "2026-12-03 10:00:00,000 INFO lowprec.train.loop: devices: 8 x NVIDIA H200 (gpu)\n"
    old = ("2026-11-22 16:34:18,770 INFO lowprec.ops.native: forward GEMM float8_e4m3fn[64, 512, 384] x "
           "float8_e4m3fn[384, 384]: native_fp8 (NVIDIA H100 80GB HBM3 has FP8 tensor cores)\n")
    assert markdown.devices_named(new) == {"NVIDIA H200"}
    assert markdown.devices_named(old + new) == {"NVIDIA H100 80GB HBM3", "NVIDIA H200"}
    assert markdown.devices_named("INFO lowprec.ops.native: forward GEMM bfloat16[8, 8]: simulated\n") == set()
