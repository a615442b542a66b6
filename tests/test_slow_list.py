"""tests/slow.txt names only tests that exist (a stale entry would silently mark nothing)."""

import ast
import pathlib

from tests.conftest import _slow_entries

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_slow_entry_names_an_existing_test_file_and_function():
    stale = []
    for entry in _slow_entries():
        path, _, name = entry.partition("::")
        file = ROOT / path
        if not file.is_file():
            stale.append(entry)
            continue
        if name:
            functions = {n.name for n in ast.walk(ast.parse(file.read_text())) if isinstance(n, ast.FunctionDef)}
            if name.split("[")[0] not in functions:
                stale.append(entry)
    assert not stale, f"tests/slow.txt entries with no such test: {stale}"
