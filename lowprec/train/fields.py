"""What each training config field means: the one source of ``--helpconfig`` and of the field
table of docs/training.md.

    python -m experiments.train --config configs/lm.py:smoke --helpconfig   # a variant's values
    python -m lowprec.train.fields configs/lm.py                            # the docs table
    python -m lowprec.train.fields configs/lm.py --write docs/training.md   # ... written there

``FIELDS`` maps every leaf of ``configs/lm.py``'s config (dotted path) to a one-line meaning:
``lowprec.train.schema.docs()``, where each field is declared with its default and allowed values.
The table's "default" column is the base variant's value, with the variants that change it
noted (``512 (`cpu` 128, `smoke` 64)``), except where ``DEFAULT_TEXT`` says it in words.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections.abc import Iterator, Mapping

from lowprec.train import schema

FIELDS: dict[str, str] = schema.docs()  # the schema's docs, in the table's order

# The docs table's default where the variants' values do not say it.
DEFAULT_TEXT: dict[str, str] = {
    "model.size": "from the variant",
    "recipe": "from the variant, else `bf16`",
}

BASE_VARIANT = "20m"  # configs/lm.py's default: the table's default column
VARIANTS = ("cpu", "smoke")  # noted where they change a default
HEADER = "| field | default | meaning |"


def leaves(cfg, prefix: str = "") -> Iterator[tuple[str, object]]:
    """``(dotted path, value)`` of every leaf of a (nested) config, in its order (a
    ``ConfigDict``'s is alphabetical)."""
    for key, value in cfg.items():
        if isinstance(value, Mapping) or hasattr(value, "items"):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def value_text(value) -> str:
    """A config value as the docs table writes it: numbers and booleans plain, strings and
    sequences in backticks (``1e-3``, `` `mixed_bf16` ``, `` `""` ``, `` `()` ``)."""
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value and abs(value) < 1e-2:
            mantissa, exponent = f"{value:.0e}".split("e")
            return f"{mantissa}e{int(exponent)}"
        return repr(value)
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, (tuple, list)):
        return f"`{_python(value)}`"
    return f"`{value}`"


def _python(value) -> str:
    """A sequence as Python source with double-quoted strings: ``(("lm_head", "bf16"),)``."""
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_python(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def default_text(path: str, base: dict, variants: Mapping[str, dict]) -> str:
    """``path``'s default: ``DEFAULT_TEXT``'s words, else the base value with the variants that
    differ (those with one value grouped: ``1e-3 (`cpu`, `smoke` 3e-3)``)."""
    if path in DEFAULT_TEXT:
        return DEFAULT_TEXT[path]
    groups: dict[str, list[str]] = {}
    for name, flat in variants.items():
        if flat[path] != base[path]:
            groups.setdefault(value_text(flat[path]), []).append(f"`{name}`")
    notes = ", ".join(f"{', '.join(names)} {text}" for text, names in groups.items())
    return value_text(base[path]) + (f" ({notes})" if notes else "")


def markdown_table(base_cfg, variant_cfgs: Mapping[str, object] | None = None) -> str:
    """The docs table: one row per leaf of ``base_cfg``, its default (``variant_cfgs`` noted where
    they differ) and its meaning. A leaf that ``FIELDS`` lacks is a ``KeyError`` naming it."""
    base = dict(leaves(base_cfg))
    variants = {name: dict(leaves(c)) for name, c in (variant_cfgs or {}).items()}
    missing = [p for p in base if p not in FIELDS]
    if missing:
        raise KeyError(f"lowprec.train.schema.FIELDS lacks config fields: {', '.join(missing)}")
    rows = [HEADER, "|---|---|---|"]
    for path in sorted(base, key=list(FIELDS).index):  # FIELDS' order (a config's items are sorted)
        cells = [f"`{path}`", default_text(path, base, variants), FIELDS[path]]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def help_text(cfg, title: str = "") -> str:
    """Every leaf of ``cfg`` with its value and meaning, one a line (``--helpconfig``)."""
    order = {p: i for i, p in enumerate(FIELDS)}
    items = sorted(leaves(cfg), key=lambda item: order.get(item[0], len(order)))
    width = max((len(p) for p, _ in items), default=0)
    values = [repr(v) for _, v in items]
    vwidth = min(max((len(v) for v in values), default=0), 24)
    lines = [title] if title else []
    for (path, _), value in zip(items, values):
        meaning = _plain(FIELDS.get(path, "(not described in lowprec.train.schema)"))
        lines.append(f"  {path:<{width}}  {value:<{vwidth}}  {meaning}")
    return "\n".join(lines)


def _plain(markdown: str) -> str:
    """A meaning without markdown: backticks dropped, ``[text](link)`` as ``text``."""
    return re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", markdown).replace("`", "")


def load_config_file(path: str, variant: str | None = None):
    """``get_config(variant)`` of the config file at ``path``."""
    spec = importlib.util.spec_from_file_location("_fields_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def table_of(path: str) -> str:
    """``markdown_table`` of the config file at ``path``: ``BASE_VARIANT``, ``VARIANTS`` noted."""
    return markdown_table(load_config_file(path, BASE_VARIANT),
                          {v: load_config_file(path, v) for v in VARIANTS})


def _span(lines: list[str]) -> tuple[int, int]:
    """The first and past-the-last line of the table that starts at ``HEADER``."""
    if HEADER not in lines:
        raise ValueError(f"no table starting with {HEADER!r}")
    start = end = lines.index(HEADER)
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return start, end


def table_in(text: str) -> str:
    """The table of ``text`` (markdown) that starts at ``HEADER``."""
    lines = text.split("\n")
    start, end = _span(lines)
    return "\n".join(lines[start:end])


def replace_table(text: str, table: str) -> str:
    """``text`` (markdown) with the table that starts at ``HEADER`` replaced by ``table``."""
    lines = text.split("\n")
    start, end = _span(lines)
    return "\n".join([*lines[:start], table, *lines[end:]])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Print (or --write) the config field table of docs/training.md.")
    parser.add_argument("config", help="the config file, e.g. configs/lm.py")
    parser.add_argument("--write", default="", help="replace the field table of this markdown file")
    args = parser.parse_args(argv)
    table = table_of(args.config)
    if not args.write:
        print(table)
        return 0
    with open(args.write) as f:
        text = f.read()
    with open(args.write, "w") as f:
        f.write(replace_table(text, table))
    print(f"wrote the field table of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
