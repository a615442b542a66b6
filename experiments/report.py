"""Sweep report: ``python -m experiments.report runs/<name> [--out DIR] [--only REGEX] [--group-by recipe] [--x tokens|step|time]``.

Writes ``report.md``, ``summary.csv`` (one row per run) and PNG figures (loss curves, final loss
and step time, telemetry heatmap) into ``--out`` (default: the sweep root), from the runs'
config.json, metrics.jsonl, STATUS and log.txt and the sweep's manifest.json (without one, every
subdirectory holding config.json is a run and the axes are the config keys that differ).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import shlex
import sys

from tqdm.auto import tqdm

from experiments.reporting import axes as axes_lib
from experiments.reporting import bars, curves, load, markdown, summary, telemetry

log = logging.getLogger("experiments.report")


@dataclasses.dataclass
class Layout:
    """How the settings are drawn and compared: axes by role, baseline ratios."""

    seed_axes: list[str]
    line_axes: list[str]
    panel_axes: list[str]
    ratios: dict  # setting key -> median step time / its baseline's (None: no baseline time)
    baseline: str  # the baseline in words


def build(root: str, out: str | None = None, group_by: str | None = None, x: str = "tokens",
          baseline: str | None = None, log_y: bool = False, ylim: tuple[float, float] | None = None,
          command: str | None = None, only: str | None = None) -> str:
    """Writes the report of the sweep at ``root`` (only runs whose id matches the regex ``only``);
    returns the path of report.md."""
    if x not in curves.X_KINDS:
        raise ValueError(f"--x {x!r} is not known; known: {', '.join(curves.X_KINDS)}")
    sweep = load.load(root, only)
    out = out or root
    os.makedirs(out, exist_ok=True)
    summaries = [summary.summarize(r) for r in tqdm(sweep.runs, desc="summarizing runs", unit="run")]
    settings = summary.settings(sweep, summaries)
    layout = _layout(sweep, settings, group_by, baseline)
    rows = _figures(settings, layout, out, x, log_y, ylim)
    label_of = {r.run.id: s.label for s in settings for r in s.runs}
    generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    figures = [("Loss curves", "loss.png", _curve_note(layout, x, ylim)), ("Final loss and step time", "final.png", "")]
    sections = [markdown.setup(sweep, command or f"python -m experiments.report {shlex.quote(root)}", generated),
                markdown.results(settings, layout.seed_axes, layout.ratios, layout.baseline, figures),
                markdown.divergence(summaries, label_of),
                markdown.telemetry(rows, "telemetry.png" if rows else None),
                markdown.runs(sweep, summaries)]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n\n".join(sections) + "\n")
    markdown.write_csv(os.path.join(out, "summary.csv"), sweep, summaries, label_of)
    log.info("wrote %s, summary.csv and figures in %s", path, out)
    return path


def _layout(sweep, settings: list[summary.Setting], group_by: str | None, baseline: str | None) -> Layout:
    setting_axes = [a for a in sweep.axes if not summary.is_seed_axis(a)]
    line_axes, panel_axes = axes_lib.split_axes(setting_axes, group_by)
    spec = axes_lib.parse_baseline(baseline, setting_axes) if baseline else None
    base = axes_lib.baselines(settings, spec, line_axes)
    log.info("%d runs in %d settings; lines by %s, panels by %s", len(sweep.runs), len(settings),
             ", ".join(line_axes) or "setting", ", ".join(panel_axes) or "none (one panel)")
    return Layout([a for a in sweep.axes if summary.is_seed_axis(a)], line_axes, panel_axes,
                  {s.key: _ratio(s, base.get(s.key)) for s in settings},
                  axes_lib.describe(spec, line_axes, panel_axes, settings))


def _figures(settings: list[summary.Setting], layout: Layout, out: str, x: str, log_y: bool, ylim) -> list:
    """Draws loss.png, final.png and (with telemetry) telemetry.png; returns the telemetry rows."""
    line_keys = dict.fromkeys(tuple(summary.fmt(s.values[a]) for a in layout.line_axes) for s in settings)
    colors = curves.palette(list(line_keys))
    curves.plot_losses(axes_lib.panels(settings, layout.panel_axes), layout.line_axes, colors, x,
                       os.path.join(out, "loss.png"), log_y=log_y, ylim=ylim)
    bars.plot_final(settings, layout.line_axes, colors, layout.ratios, layout.baseline, os.path.join(out, "final.png"))
    rows = telemetry.summarize(settings)
    if rows:
        telemetry.plot_heatmap(rows, os.path.join(out, "telemetry.png"))
    log.info("telemetry: %d setting × role rows%s", len(rows), "" if rows else " (no telemetry records)")
    return rows


def _curve_note(layout: Layout, x: str, ylim) -> str:
    panels = f"one panel per value of {', '.join(layout.panel_axes)}" if layout.panel_axes else "one panel"
    limits = (f"loss axis {ylim[0]:g}–{ylim[1]:g}" if ylim else f"the loss axis spans the curves after the first "
              f"{curves.SKIP_PERCENT}% of the x range (--ylim to change)")
    lines = ", ".join(layout.line_axes) or "setting"
    return (f"Loss curves vs {x}: {panels}, a line per {lines} (the mean over seeds of the train loss, a trailing "
            f"mean over {curves.SMOOTH_PERCENT}% of the records; the band is the seeds' min–max), val losses as "
            f"dots, × where a run's loss went non-finite or it failed; {limits}.")


def _ratio(setting: summary.Setting, base: summary.Setting | None) -> float | None:
    mine, theirs = setting.median_step_s(), base.median_step_s() if base is not None else None
    return mine / theirs if mine is not None and theirs else None


def _ylim(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ylim wants LO,HI (e.g. 1.2,3); got {text!r}") from None
    return lo, hi


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.splitlines()[0])
    p.add_argument("root", help="the sweep's directory (runs/<name>)")
    p.add_argument("--out", default=None, help="where report.md, summary.csv and the figures go (default: root)")
    p.add_argument("--group-by", default=None,
                   help="axes whose settings share a panel as lines, e.g. recipe (default: the last non-seed "
                        "axis); the other non-seed axes get one panel per value")
    p.add_argument("--x", default="tokens", choices=curves.X_KINDS, help="x axis of the loss curves")
    p.add_argument("--baseline", default=None,
                   help="the setting step times are compared with, e.g. recipe=bf16 (default: the first setting)")
    p.add_argument("--only", default=None, help="regex: only runs whose id matches (e.g. 'recipe-w4a8')")
    p.add_argument("--log-y", action="store_true", help="log-scale loss axis")
    p.add_argument("--ylim", type=_ylim, default=None, help="loss axis limits LO,HI")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[report] %(message)s")
    try:
        path = build(args.root, args.out, args.group_by, args.x, args.baseline, args.log_y, args.ylim,
                     only=args.only, command="python -m experiments.report " + shlex.join(argv))
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
