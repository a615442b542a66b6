"""lowprec.train is a one-way chain: build below restore and finetune, below the loop; no cycle
among its modules, counting imports inside functions (read from the source with ``ast``)."""

import ast
import pathlib

import pytest

PACKAGE = "lowprec.train"
DIR = pathlib.Path(__file__).resolve().parents[2] / "lowprec" / "train"
MODULES = sorted(p.stem for p in DIR.glob("*.py"))


def _targets(node: ast.AST) -> list[str]:
    """The lowprec.train modules an import statement imports (``__init__`` for a name of the package)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [n.split(".")[2] for n in names if n.startswith(PACKAGE + ".") and n.split(".")[2] in MODULES]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: inside lowprec/train itself
        base = f"{PACKAGE}.{base}" if base else PACKAGE
    if base == PACKAGE:
        return [a.name if a.name in MODULES else "__init__" for a in node.names]
    if base.startswith(PACKAGE + "."):
        return [base.split(".")[2]]
    return []


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(the lowprec.train modules ``module`` imports at module level, those it imports inside a function)."""
    tree = ast.parse((DIR / f"{module}.py").read_text())
    top = {t for node in tree.body for t in _targets(node)}
    nested = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            nested |= {t for node in ast.walk(fn) for t in _targets(node)}
    return top - {module}, nested - {module}


GRAPH = {m: set().union(*_imports(m)) for m in MODULES}


def _reachable(graph: dict, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _cycle(graph: dict) -> list[str] | None:
    """One cycle of ``graph`` as a path [a, b, ..., a], or None."""
    for start in graph:
        path, stack = [start], [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                path.pop()
            elif nxt == start:
                return path + [start]
            elif nxt not in path:
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) in (["a", "b", "c", "a"], ["b", "c", "a", "b"],
                                                                        ["c", "a", "b", "c"])
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_parser_sees_each_form():
    src = ("from lowprec.train import build, train\nfrom lowprec.train.step import X\nimport lowprec.train.sharding\n"
           "from . import rundir\nfrom .metrics import Y\nfrom lowprec.models import llama\n")
    got = {t for node in ast.parse(src).body for t in _targets(node)}
    assert got == {"build", "__init__", "step", "sharding", "rundir", "metrics"}


def test_the_chain_holds():
    # The graph was read: the chain's own edges are there.
    for low, high in (("build", "restore"), ("build", "finetune"), ("restore", "finetune"), ("build", "loop"),
                      ("finetune", "loop")):
        assert low in GRAPH[high], f"{high} should import {low}"
    assert _cycle(GRAPH) is None, f"import cycle in lowprec.train: {' -> '.join(_cycle(GRAPH))}"
    # Directly or through any other module.
    assert not _reachable(GRAPH, "build") & {"loop", "restore", "finetune", "__init__"}
    assert not _reachable(GRAPH, "restore") & {"loop", "finetune", "__init__"}
    assert not _reachable(GRAPH, "finetune") & {"loop", "__init__"}


@pytest.mark.parametrize("module", [m for m in MODULES if m != "__init__"])
def test_no_import_among_train_modules_hides_in_a_function(module):
    _, nested = _imports(module)
    assert not nested, f"lowprec/train/{module}.py imports {sorted(nested)} inside a function; import at the top"
