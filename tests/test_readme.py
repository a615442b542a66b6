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


def test_fields_describe_exactly_the_config_leaves():
    from configs import lm
    from lowprec.train import fields

    leaves = [path for path, _ in fields.leaves(lm.get_config("20m"))]
    missing = sorted(set(leaves) - set(fields.FIELDS))
    stale = sorted(set(fields.FIELDS) - set(leaves))
    assert not missing and not stale, f"lowprec/train/fields.py FIELDS: missing {missing}, stale {stale}"
    assert set(fields.DEFAULT_TEXT) <= set(fields.FIELDS)
    assert all(m.strip() and "\n" not in m for m in fields.FIELDS.values())


def test_training_guide_field_table_is_the_generated_one():
    from lowprec.train import fields

    guide = (ROOT / "docs" / "training.md").read_text()
    assert fields.table_in(guide) == fields.table_of(str(ROOT / "configs" / "lm.py")), (
        "docs/training.md's field table is stale: python -m lowprec.train.fields configs/lm.py "
        "--write docs/training.md")
