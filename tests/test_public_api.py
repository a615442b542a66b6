"""Every exported name is documented: each name in a package's ``__all__`` appears, as a word, in
the docs (README.md, docs/**/*.md, lowprec/**/README.md) or in a docstring example of the package
(a ``>>>`` line, or an indented block after a blank line, as in the packages' own docstrings)."""

import ast
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("lowprec", "lowprec.formats", "lowprec.quant", "lowprec.ops", "lowprec.nn", "lowprec.optim",
            "lowprec.models", "lowprec.data", "lowprec.ptq", "lowprec.train")


def _docs_text() -> str:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "lowprec").rglob("README.md"))]
    return "\n".join(p.read_text() for p in paths)


def _examples(doc: str) -> list[str]:
    """The example lines of a (cleaned) docstring: ``>>>``/``...`` lines and indented blocks after a blank line."""
    out, in_block, prev_blank = [], False, True
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.startswith((">>>", "... ")):
            out.append(stripped)
            continue
        indented = bool(stripped) and line[0].isspace()
        in_block = indented and (in_block or prev_blank)
        if in_block:
            out.append(stripped)
        prev_blank = not stripped
    return out


def _docstrings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _example_text(package: str) -> str:
    folder = ROOT.joinpath(*package.split("."))
    paths = [folder / "__init__.py"] if package == "lowprec" else sorted(folder.rglob("*.py"))
    return "\n".join(line for path in paths for doc in _docstrings(ast.parse(path.read_text()))
                     for line in _examples(doc))


def test_examples_are_the_indented_blocks_and_prompts():
    doc = "Title.\n\n    x = lp.a(1)\n    y = b(x)\nText\n  not_code after text\n\n>>> c()\n... d()\nArgs:\n    e: no"
    assert _examples(doc) == ["x = lp.a(1)", "y = b(x)", ">>> c()", "... d()"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_is_documented(package):
    module = importlib.import_module(package)
    text = _docs_text() + "\n" + _example_text(package)
    missing = [name for name in module.__all__ if not re.search(rf"\b{re.escape(name)}\b", text)]
    assert not missing, (f"{package}.__all__ names found in no doc page and no docstring example: {missing}; "
                         "document each (docs/*.md) or drop it from __all__")


@pytest.mark.parametrize("package", PACKAGES)
def test_all_names_exist_once(package):
    module = importlib.import_module(package)
    assert len(set(module.__all__)) == len(module.__all__), f"{package}.__all__ repeats a name"
    assert [n for n in module.__all__ if not hasattr(module, n)] == [], f"{package}.__all__ names a missing attribute"
