"""The one grammar of named things (``parse_call``) and the one registry shape (``Registry``)."""

import ast
import pathlib

import pytest

from lowprec.registry import Registry, parse_call


@pytest.mark.parametrize("text, expected", [
    ("nf4", ("nf4", {})),
    ("  nf4  ", ("nf4", {})),
    ("dge()", ("dge", {})),
    ("dge(k=3, cap=2.5)", ("dge", {"k": 3, "cap": 2.5})),
    ("f(x=-1, y=-2.5e-3, z=+4)", ("f", {"x": -1, "y": -2.5e-3, "z": 4})),
    ("f(a=True, b=False, c=None)", ("f", {"a": True, "b": False, "c": None})),
    ("f(s='a,b(c)=d', t=\"x'y\")", ("f", {"s": "a,b(c)=d", "t": "x'y"})),
    ("f(g='tile(1,-1)', axes=(0, (1, -2)))", ("f", {"g": "tile(1,-1)", "axes": (0, (1, -2))})),
    ("f(v=[1, 2], one=(3,), empty=())", ("f", {"v": [1, 2], "one": (3,), "empty": ()})),
])
def test_parse_call_reads_python_literals(text, expected):
    assert parse_call(text) == expected


def test_bare_words_are_strings_only_where_asked():
    assert parse_call("dge(dtype=bfloat16, mean_one=true, x=none)", words=True) == (
        "dge", {"dtype": "bfloat16", "mean_one": True, "x": None})
    assert parse_call("f(a=(b, 1))", words=True) == ("f", {"a": ("b", 1)})
    with pytest.raises(ValueError, match=r"name spec 'f\(a=b\)': .*'b' is not a literal \(quote strings\)"):
        parse_call("f(a=b)")


@pytest.mark.parametrize("text, words", [
    ("x(", "x("), ("f(1)", "positional"), ("f(**k)", "positional"), ("f(a=1, a=2)", "'a' given twice"),
    ("a.b", "not name or name(k=v, ...)"), ("f(a=1)(b=2)", "not name or name(k=v, ...)"),
    ("f(a=g())", "not a literal"), ("", "''"), ("3", "not name"),
])
def test_parse_errors_name_the_text(text, words):
    with pytest.raises(ValueError) as err:
        parse_call(text, kind="format")
    assert str(err.value).startswith(f"format spec {text!r}: ") and words in str(err.value)


def test_a_spec_is_a_string():
    with pytest.raises(TypeError, match="a format spec is a string; got int"):
        parse_call(3, kind="format")


def _toy() -> Registry:
    reg = Registry("toy")
    reg.register("a", 1)
    reg.register("b", 2)
    reg.register("scaled", 10, factory=lambda k=1, cap=3: 10 * k)
    return reg


def test_register_get_names_unregister():
    reg = _toy()
    assert reg.get("a") == 1 and reg.get(" b ") == 2 and reg.names() == ["a", "b", "scaled"]
    assert reg.get("scaled") == 10 and reg.get("scaled(k=4)") == 40 and reg.get("scaled()") == 10
    assert reg.register("a", 1) == 1  # the same entry again: fine
    with pytest.raises(ValueError, match=r"toy 'a' is already registered as 1; pass overwrite=True"):
        reg.register("a", 5)
    assert reg.register("a", 5, overwrite=True) == 5 and reg.get("a") == 5
    reg.unregister("a")
    assert "a" not in reg and reg.names() == ["b", "scaled"]
    with pytest.raises(ValueError, match=r"unknown toy 'a'; known: b, scaled$"):
        reg.unregister("a")
    with pytest.raises(ValueError, match="toy names are identifiers"):
        reg.register("not a name", 3)


def test_one_set_of_errors():
    reg = _toy()
    with pytest.raises(ValueError, match=r"^unknown toy 'x'; known: a, b, scaled$"):
        reg.get("x")
    with pytest.raises(ValueError, match=r"^unknown toy 'x\(k=1\)'; known: a, b, scaled$"):
        reg.get("x(k=1)")
    with pytest.raises(ValueError, match=r"^toy 'scaled\(p=2\)': unknown argument 'p'; known: k, cap$"):
        reg.get("scaled(p=2)")
    with pytest.raises(ValueError, match=r"^toy 'a\(k=1\)': a takes no arguments$"):
        reg.get("a(k=1)")
    with pytest.raises(ValueError, match=r"^toy spec 'scaled\(': "):
        reg.get("scaled(")


def test_check_derive_and_constructors():
    reg = Registry("pair", check=lambda name, obj: (name, obj) if isinstance(obj, int) else _refuse(obj),
                   derive=lambda obj, kw: (obj[0], obj[1] + kw.get("add", 0)), params=lambda obj: ("add",))
    assert reg.register("x", 1) == ("x", 1) and reg.get("x(add=2)") == ("x", 3)
    with pytest.raises(TypeError, match="needs an int"):
        reg.register("y", "1")
    reg.constructors["make"] = lambda v=0: ("made", v)
    assert reg.get("make(v=4)") == ("made", 4) and reg.names() == ["x"]
    with pytest.raises(ValueError, match=r"unknown pair 'z'; known: x, make\(\.\.\.\)"):
        reg.get("z")


def _refuse(obj):
    raise TypeError(f"needs an int; got {obj!r}")


def test_the_module_imports_nothing_from_lowprec():
    src = (pathlib.Path(__file__).resolve().parents[1] / "lowprec" / "registry.py").read_text()
    mods = [n.module or "" for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)]
    mods += [a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in mods if m.startswith("lowprec")]


def _registries():
    """Every registry of lowprec, with a toy entry and, where the kind takes arguments, a spec
    with arguments and what its result must satisfy."""
    import functools

    import lowprec as lp
    from lowprec.data import pinned, sources
    from lowprec.formats.registry import FORMATS
    from lowprec.ops.recipes import RECIPES
    from lowprec.optim.policy import POLICIES
    from lowprec.quant.estimators import ESTIMATORS, Estimator, dge
    from lowprec.quant.presets import PRESET_REGISTRY

    def toy_loader(size=1, **options):
        return ("corpus", size)

    return {
        "format": (FORMATS, lambda: lp.formats.FloatFormat(2, 2), {}, None),
        "recipe": (RECIPES, lambda: lp.ops.Recipe(), {}, ("compute_dtype='bfloat16'", lambda r: r.compute_dtype == "bfloat16")),
        "estimator": (ESTIMATORS, lambda: Estimator("toy"), {"factory": lambda k=2.0: dge(k=k)},
                      ("k=3", lambda e: e == dge(k=3))),
        "policy": (POLICIES, lambda: lp.optim.Policy(compute_dtype="float16"), {},
                   ("loss_scale='dynamic'", lambda p: p.loss_scale == "dynamic" and p.compute_dtype == "float16")),
        "preset": (PRESET_REGISTRY, lambda: lp.Quantizer("int4", "tensor"), {},
                   ("granularity='channel'", lambda q: q == lp.Quantizer("int4", "channel"))),
        "data source": (sources.SOURCES, lambda: toy_loader, {},
                        ("size=3", lambda f: isinstance(f, functools.partial) and f() == ("corpus", 3))),
        "corpus": (pinned.CORPORA, lambda: pinned.get("pypi_v1"), {}, None),
    }


def test_every_registry_of_lowprec_is_in_the_conformance_suite():
    """A new ``Registry(...)`` in lowprec must join ``_registries`` (so it is tested below)."""
    root = pathlib.Path(__file__).resolve().parents[1] / "lowprec"
    kinds = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Registry" and node.args:
                kinds.add(ast.literal_eval(node.args[0]))
    assert kinds == set(_registries())


@pytest.mark.parametrize("kind", ["format", "recipe", "estimator", "policy", "preset", "data source", "corpus"])
def test_every_registry_answers_the_same_way(kind):
    reg, make, how, with_args = _registries()[kind]
    assert reg.kind == kind and "toy_entry" not in reg.names()
    stored = reg.register("toy_entry", make(), **how)
    try:
        assert reg.get("toy_entry") is stored and "toy_entry" in reg.names() and reg.names() == sorted(reg.names())
        if with_args is None:
            with pytest.raises(ValueError, match=rf"^{kind} 'toy_entry\(x=1\)': toy_entry takes no arguments$"):
                reg.get("toy_entry(x=1)")
        else:
            args, ok = with_args
            assert ok(reg.get(f"toy_entry({args})"))
            with pytest.raises(ValueError, match=rf"^{kind} 'toy_entry\(bogus=1\)': unknown argument 'bogus'; known: "):
                reg.get("toy_entry(bogus=1)")
        with pytest.raises(ValueError, match=rf"^{kind} spec 'toy_entry\(': "):
            reg.get("toy_entry(")
    finally:
        reg.unregister("toy_entry")
    assert "toy_entry" not in reg.names()
    with pytest.raises(ValueError, match=rf"^unknown {kind} 'toy_entry'; known: {reg.names()[0]}, "):
        reg.get("toy_entry")
