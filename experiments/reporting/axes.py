"""Which axes draw lines and which split panels (``--group-by``), and each setting's baseline
(``--baseline``) for step-time ratios."""

from __future__ import annotations

from experiments.reporting.summary import Setting, fmt


def resolve_axis(name: str, axes: list[str], flag: str) -> str:
    """``name`` as one of ``axes``: its full path, or a last path component naming only one axis."""
    if name in axes:
        return name
    tails = [a for a in axes if a.split(".")[-1] == name]
    if len(tails) == 1:
        return tails[0]
    raise ValueError(f"{flag}: {name!r} is not an axis of this sweep; axes: {', '.join(axes) or 'none'}")


def split_axes(axes: list[str], group_by: str | None) -> tuple[list[str], list[str]]:
    """(line axes, panel axes) over the non-seed ``axes``. ``group_by`` ("a" or "a,b") names the
    axes whose settings share a panel as separate lines; the other axes get a panel per value.
    Default: the last axis draws lines, so two axes give one panel per value of the first."""
    if group_by:
        lines = [resolve_axis(n.strip(), axes, "--group-by") for n in group_by.split(",") if n.strip()]
    else:
        lines = axes[-1:]
    return lines, [a for a in axes if a not in lines]


def panels(settings: list[Setting], panel_axes: list[str]) -> dict[str, list[Setting]]:
    """Settings grouped by their values on the panel axes: {title: settings}, in order ("" for one panel)."""
    out: dict[str, list[Setting]] = {}
    for s in settings:
        out.setdefault(", ".join(f"{a}={fmt(s.values[a])}" for a in panel_axes), []).append(s)
    return out


def matches(value, text: str) -> bool:
    """Whether an axis value is the one ``text`` spells ("fp8", "0.001" for 1e-3, "true" for True)."""
    shown = fmt(value)
    if shown == text or shown.lower() == text.lower():
        return True
    try:
        return float(shown) == float(text)
    except ValueError:
        return False


def parse_baseline(text: str, axes: list[str]) -> dict[str, str]:
    """``"recipe=bf16[,optim.lr=0.001]"`` as {axis: value text}."""
    out = {}
    for part in [p for p in text.split(",") if p.strip()]:
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--baseline: {part!r} is not axis=value (e.g. recipe=bf16)")
        out[resolve_axis(name.strip(), axes, "--baseline")] = value.strip()
    return out


def baselines(settings: list[Setting], spec: dict[str, str] | None, line_axes: list[str]) -> dict[tuple, Setting]:
    """Each setting's baseline: the setting with ``spec``'s values and this setting's values on
    every other axis. Default spec: the first setting's values on the line axes (so each panel
    compares with its own first line). A spec that no setting has is an error."""
    if spec is None:
        spec = {a: fmt(settings[0].values[a]) for a in line_axes}
    if not any(all(matches(s.values[a], v) for a, v in spec.items()) for s in settings):
        raise ValueError(f"--baseline {','.join(f'{a}={v}' for a, v in spec.items())} matches no setting; "
                         f"settings: {'; '.join(s.label for s in settings)}")
    out = {}
    for s in settings:
        for t in settings:
            if all(matches(t.values[a], spec[a]) if a in spec else fmt(t.values[a]) == fmt(v)
                   for a, v in s.values.items()):
                out[s.key] = t
                break
    return out


def describe(spec: dict[str, str] | None, line_axes: list[str], panel_axes: list[str],
             settings: list[Setting]) -> str:
    """The baseline in words, for the report."""
    if spec is not None:
        return ", ".join(f"{a}={v}" for a, v in spec.items())
    first = ", ".join(f"{a}={fmt(settings[0].values[a])}" for a in line_axes) or settings[0].label
    return f"{first} (the first setting{' of each panel' if panel_axes else ''})"
