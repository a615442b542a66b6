"""The README's and the guides' (docs/*.md) Python examples run as written."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_and_guides_have_python_examples():
    assert python_blocks(ROOT / "README.md"), "the README has no python example"
    assert len(DOCS) > 1, "no guides under docs/"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(path):
    for block in python_blocks(path):
        exec(compile(block, str(path), "exec"), {})


def test_local_links_resolve():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def test_training_guide_lists_every_config_field():
    from configs import lm

    def leaves(cfg, prefix=""):
        for key, value in cfg.items():
            if hasattr(value, "items"):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield prefix + key

    guide = (ROOT / "docs" / "training.md").read_text()
    missing = [f for f in leaves(lm.get_config("20m")) if f"`{f}`" not in guide]
    assert not missing, f"docs/training.md lacks config fields: {', '.join(missing)}"
