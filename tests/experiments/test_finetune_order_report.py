"""The fine-tune order report reads the study's sweeps, names every arm and keeps unfinished runs."""

import csv
import json
import os

import pytest

from experiments import finetune_order_report as report

ARMS = [({"finetune.mode": "full", "optim.lr": 0.0}, 2.35, 2.34), ({"finetune.mode": "full", "optim.lr": 1e-4}, 1.40, 1.42),
        ({"finetune.mode": "qat", "finetune.qat_estimator": "dge", "optim.lr": 1e-4}, 1.41, 1.41),
        ({"finetune.mode": "qlora", "optim.lr": 1e-3}, None, None)]  # the last one failed


def _run(root, i, overrides, val, val_q, start="a1b2c3d4e5f60718"):
    path = os.path.join(root, f"run{i}")
    os.makedirs(path)
    config = {"finetune": {"mode": overrides["finetune.mode"], "qat_estimator": overrides.get("finetune.qat_estimator", "ste")},
              "optim": {"lr": overrides["optim.lr"]}}
    if val is not None:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f)
        with open(os.path.join(path, "metrics.jsonl"), "w") as f:
            for line in ({"step": 0, "split": "init", "checkpoint": start, "checkpoint_step": 2000},
                         {"step": 600, "split": "train", "loss": 1.3}, {"step": 600, "split": "val", "loss": val},
                         {"step": 600, "split": "val_quantized", "loss": val_q}):
                f.write(json.dumps(line) + "\n")
    with open(os.path.join(path, "STATUS"), "w") as f:
        f.write("done\n" if val is not None else "failed\nexit code 1\n")
    return {"id": f"run{i}", "overrides": overrides}


def test_report_tables_every_arm(tmp_path):
    sweep = tmp_path / "20m-int4"
    runs = [_run(str(sweep), i, o, v, q) for i, (o, v, q) in enumerate(ARMS)]
    (sweep / "manifest.json").write_text(json.dumps({"config": "configs/finetune_order.py:20m,int4", "runs": runs,
                                                     "axes": ["finetune.mode", "optim.lr"]}))
    (tmp_path / "unrelated").mkdir()
    table = report.write(str(tmp_path), str(tmp_path / "out"))
    assert [(r["arm"], r["status"]) for r in table] == [
        ("no fine-tuning", "done"), ("full bf16, then RTN", "done"), ("QAT (DGE)", "done"),
        ("QLoRA, merge, requantize", "failed")]
    assert table[1]["order"] == "fine-tune first" and table[2]["order"] == "quantize first"
    assert table[1]["val_quantized"] == 1.42 and table[1]["steps"] == 600
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| full bf16, then RTN | fine-tune first | done | 600 | 1.4000 | 1.4200 | a1b2c3d4e5f60718 |" in md
    assert "| QLoRA, merge, requantize | quantize first | failed | 0 | - | - | unknown |" in md
    assert "Warning" not in md  # every finished arm started from one checkpoint
    assert len(list(csv.DictReader(open(tmp_path / "out" / "results.csv")))) == 4
    assert (tmp_path / "out" / "finetune_order.png").stat().st_size > 0


def test_a_root_without_study_sweeps_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no <size>-<format> sweeps"):
        report.write(str(tmp_path), str(tmp_path))


def test_arms_from_different_pretrained_checkpoints_are_flagged(tmp_path):
    sweep = tmp_path / "6m-nf4"
    runs = [_run(str(sweep), 0, ARMS[0][0], 2.4, 2.4, start="1111111111111111"),
            _run(str(sweep), 1, ARMS[1][0], 1.5, 1.6, start="2222222222222222")]
    (sweep / "manifest.json").write_text(json.dumps({"config": "c", "runs": runs, "axes": ["optim.lr"]}))
    table = report.write(str(tmp_path), str(tmp_path / "out"))
    assert [r["pretrained"] for r in table] == ["1111111111111111", "2222222222222222"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Warning: the 6m runs did not all start from one pretrained checkpoint** (1111111111111111, 2222222222222222)" in md
