"""The sections of report.md (setup, runs, results, divergence, telemetry) and summary.csv."""

from __future__ import annotations

import csv
import json
import math
import re

from experiments.reporting import cells
from experiments.reporting.load import Sweep, infer_axes
from experiments.reporting.summary import FINAL_PERCENT, RunSummary, Setting, fmt, is_seed_axis, spread
from experiments.reporting.telemetry import DIGITS, STATS, Row

# The devices a run's log.txt names: the loop's "devices: N x KIND (platform)" line, and (in logs
# written before it had one) the GEMM path lines of FP8 operands.
DEVICE = re.compile(r"\((.+?) has (?:no )?FP8 tensor cores\)|devices: \d+ x (.+?) \((?:gpu|cpu|tpu)\)")
MODEL = re.compile(r"model (\S+): ([\d.]+M) parameters;.*?mesh (\{[^}]*\})")
STATUS_ORDER = ("done", "running", "failed", "not started")


def status_counts(counts: dict[str, int]) -> str:
    order = [s for s in STATUS_ORDER if s in counts] + sorted(s for s in counts if s not in STATUS_ORDER)
    return ", ".join(f"{counts[s]} {s}" for s in order)


def devices_named(log_text: str) -> set[str]:
    """The device kinds a run's log names (see ``DEVICE``)."""
    return {a or b for a, b in DEVICE.findall(log_text)}


def device_info(sweep: Sweep) -> str:
    """The devices, models and meshes the runs' log.txt files name."""
    kinds, models = set(), set()
    for r in sweep.runs:
        kinds.update(devices_named(r.log_text))
        models.update(f"model {m}, {p} parameters, mesh {mesh}" for m, p, mesh in MODEL.findall(r.log_text))
    parts = [f"device {', '.join(sorted(kinds))}"] if kinds else ["device not named in the runs' logs"]
    return "; ".join(parts + sorted(models))


def trained_at(runs) -> str:
    """"; runs trained at: `abc1234` (3 runs), ..." from the runs' runner.log records, if any."""
    started = [r for r in runs if r.status != "not started"]
    by_commit: dict[str, int] = {}
    for r in started:
        for c in r.commits:
            by_commit[c[:7]] = by_commit.get(c[:7], 0) + 1
    if not by_commit:
        return ""
    unknown = sum(not r.commits for r in started)
    parts = [f"`{c}` ({n} run{'s' * (n > 1)})" for c, n in by_commit.items()]
    if unknown:
        parts.append(f"not recorded ({unknown} run{'s' * (unknown > 1)}, launched before the runner recorded it)")
    return "; runs trained at: " + ", ".join(parts)


def setup(sweep: Sweep, command: str, generated: str) -> str:
    counts = {}
    for r in sweep.runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    axes = ", ".join(f"`{a}` ({'seeds' if is_seed_axis(a) else 'settings'})" for a in sweep.axes) or "none"
    if sweep.manifest:
        source = f"`{sweep.spec}` (manifest.json created {sweep.created})"
        versions = ", ".join(f"{k} {v}" for k, v in sweep.versions.items() if v) or "not recorded"
        git = f"`{sweep.git}` (the sweep's last launch)" if sweep.git else "not recorded"
    else:
        source = ("no manifest.json: every subdirectory with a config.json is a run; "
                  "axes are the config keys that differ")
        versions = git = "not recorded (no manifest.json)"
    rows = [["sweep config", source], ["axes", axes], ["runs", f"{len(sweep.runs)} ({status_counts(counts)})"],
            ["git commit", git + trained_at(sweep.runs)], ["software", versions], ["device", cells.text(device_info(sweep), 600)]]
    extra = [a for a in infer_axes([r.config for r in sweep.runs]) if a not in sweep.axes]
    if extra:
        rows.append(["note", f"the runs' configs also differ in: {', '.join(extra)}"])
    first = next((r for r in sweep.runs if r.config), None)
    config = "" if first is None else (
        f"\n\n<details><summary>Resolved config of run <code>{first.id}</code> (every run is this config with its "
        f"overrides below)</summary>\n\n```json\n{json.dumps(first.config, indent=2, sort_keys=True)}\n```\n</details>")
    return (f"# Sweep report: `{sweep.root}`\n\nGenerated {generated} by `{command}`.\n\n## Setup\n\n"
            + cells.table(["", ""], rows) + config)


def runs(sweep: Sweep, summaries: list[RunSummary]) -> str:
    header = ["run"] + sweep.axes + ["status", "last step", "tokens", "final train loss", "final val loss"]
    rows = [[f"`{s.run.id}`"] + [cells.text(fmt(s.run.overrides.get(a, s.run.value(a)))) for a in sweep.axes]
            + [s.run.status, str(s.steps) if s.steps is not None else "—", cells.count(s.tokens),
               cells.single(s.final_train), cells.single(s.final_val)] for s in summaries]
    return "## Runs and their overrides\n\n" + cells.table(header, rows)


def results(settings: list[Setting], seed_axes: list[str], ratios: dict, baseline: str,
            figures: list[tuple[str, str, str]]) -> str:
    """The settings table, its notes, and the figures as (alt text, file, caption)."""
    header = ["setting", "seeds", "final train loss", "final val loss", "tokens seen", "wall-clock",
              "median step time", "vs baseline", "status"]
    rows = []
    for s in settings:
        step = s.median_step_s()
        ratio = ratios.get(s.key)
        rows.append([cells.text(s.label), s.seeds(seed_axes),
                     cells.loss(*spread(r.final_train for r in s.runs), len(s.runs)),
                     cells.loss(*spread(r.final_val for r in s.runs), len(s.runs)),
                     cells.span([r.tokens for r in s.runs], cells.count),
                     cells.span([r.wall_s for r in s.runs], cells.duration),
                     "—" if step is None else f"{step * 1e3:.1f} ms",
                     "—" if ratio is None else f"{ratio:.2f}×", status_counts(s.status_counts())])
    notes = (f"Final train loss: the mean of the last {FINAL_PERCENT}% of a run's train records; final val loss: "
             "its last evaluation. Both are **mean ± half-range** ((max − min) / 2) over the seeds with a finite "
             "value, \"(k of n)\" when some had none. Wall-clock: the training time the loop measured (the sum of "
             "`step_time_s` × `train.log_every`, compilation and evaluation included); the range over seeds. "
             "Median step time: over a run's train records without the first after each start or resume "
             f"(compilation), then the median over seeds; \"vs baseline\" divides it by the baseline's: {baseline}.")
    images = "\n\n".join(f"![{alt}]({name})" + (f"\n\n{caption}" if caption else "") for alt, name, caption in figures)
    return "## Results\n\n" + cells.table(header, rows) + "\n\n" + notes + "\n\n" + images


def divergence(summaries: list[RunSummary], label_of: dict[str, str]) -> str:
    bad = [s for s in summaries if s.divergence]
    if not bad:
        return "## Divergence and failures\n\nNo run's loss went non-finite and no run failed."
    rows = [[f"`{s.run.id}`", cells.text(label_of[s.run.id]), s.run.status,
             str(s.diverged_step) if s.diverged_step is not None else "before the first record", s.divergence,
             cells.text(s.run.reason or "—")] for s in bad]
    return ("## Divergence and failures\n\nMarked × on the loss curves (at the run's last finite smoothed loss). "
            "Step: the first non-finite loss in the metrics, else the step the failure names, else the last "
            "logged step.\n\n" + cells.table(["run", "setting", "status", "step", "what", "STATUS reason"], rows))


def telemetry(rows: list[Row], figure: str | None) -> str:
    if not rows:
        return ("## Numerics telemetry\n\nNo quantized operand reported telemetry (telemetry records are written "
                "every `train.telemetry_every` steps; roles that a recipe leaves in high precision report none).")
    header = ["setting", "role", "layers", "runs"] + [title for _, title, _ in STATS]
    body = [[cells.text(r.setting.label), r.role, str(r.layers), str(r.runs)]
            + [cells.single(r.values.get(stat, math.nan) * factor, DIGITS.get(stat, 4))
               for stat, _, factor in STATS] for r in rows]
    return ("## Numerics telemetry\n\nPer GEMM operand role: the mean over layers, telemetry records and seeds. "
            "Saturated: scaled values beyond the format's max; clamped: OCC outlier clamping; underflow: non-zero "
            "values quantized to zero; SQNR: 10 log10(signal / quantization noise); max/std and kurtosis: the "
            "operand's outliers before quantization (largest |x| over the standard deviation; the fourth "
            "standardized moment, 3 for a Gaussian).\n\n"
            + cells.table(header, body) + (f"\n\n![Telemetry heatmap]({figure})" if figure else ""))


CSV_FIELDS = ("status", "reason", "last_step", "tokens", "wall_clock_s", "median_step_time_s",
              "final_train_loss", "final_val_loss", "diverged_step")


def write_csv(path: str, sweep: Sweep, summaries: list[RunSummary], label_of: dict[str, str]) -> None:
    """One row per run: its id, setting, axis values and numbers (full precision; empty: none)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "setting"] + sweep.axes + list(CSV_FIELDS))
        for s in summaries:
            values = [s.run.status, " ".join(s.run.reason.split()), s.steps, s.tokens, s.wall_s, s.median_step_s,
                      s.final_train, s.final_val, s.diverged_step]
            w.writerow([s.run.id, label_of[s.run.id]] + [fmt(s.run.value(a)) for a in sweep.axes]
                       + ["" if v is None else repr(v) if isinstance(v, float) else v for v in values])
