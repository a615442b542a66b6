"""Sweep reports (``python -m experiments.report``): reading a sweep's run directories
(``load``), per-run and per-setting numbers (``summary``), loss curves (``curves``), numerics
telemetry (``telemetry``) and the written report (``markdown``)."""
