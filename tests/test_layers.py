"""The layer rule of docs/architecture.md: formats -> quant -> ops -> nn, optim -> models, data ->
train, ptq (and testing above them all); a package imports only packages of lower layers (imports inside functions included,
read from the source with ``ast``), and lowprec imports none of experiments, launch, configs."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYER = {"formats": 0, "quant": 1, "ops": 2, "nn": 3, "optim": 3, "models": 4, "data": 4, "train": 5, "ptq": 5,
         "testing": 6}  # the conformance checks: above every package, so none imports them
OUTSIDE = {"experiments", "launch", "configs", "scripts"}


def _imported(tree: ast.AST) -> set[str]:
    """Top-level package names (``lowprec.<pkg>`` as ``<pkg>``) that a module imports anywhere."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "lowprec" else [])
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "lowprec" and len(parts) > 1:
                out.add(parts[1])
            elif parts[0] in OUTSIDE:
                out.add(parts[0])
    return out


def test_the_parser_sees_each_form():
    src = "import lowprec.ops\nfrom lowprec.quant import x\nfrom lowprec import nn\ndef f():\n    from launch import runner\n"
    assert _imported(ast.parse(src)) == {"ops", "quant", "nn", "launch"}


def test_the_page_states_the_rule_tested_here():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert "formats -> quant -> ops -> nn, optim -> models, data -> train, ptq" in text
    assert sorted(p.name for p in (ROOT / "lowprec").iterdir() if (p / "__init__.py").exists()) == sorted(LAYER)


@pytest.mark.parametrize("package", sorted(LAYER))
def test_a_package_imports_only_lower_layers(package):
    bad = {}
    for path in sorted((ROOT / "lowprec" / package).rglob("*.py")):
        for dst in _imported(ast.parse(path.read_text())) - {package}:
            if dst in OUTSIDE or LAYER.get(dst, -1) >= LAYER[package]:
                bad[path.relative_to(ROOT).as_posix()] = dst
    assert not bad, f"imports against the layer rule (docs/architecture.md): {bad}"
