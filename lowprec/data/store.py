"""On-disk formats: raw token files (memory-mapped) and prepared corpus directories.

A prepared corpus directory holds ``tokens.bin`` (the token stream, raw little-endian),
``documents.tsv`` (source, group, name, start, length per document) and ``corpus.json``
(dtype, vocabulary, hashes, provenance). ``corpus.json`` is written last, so its presence
means the directory is complete; such a directory can be copied to a machine without network
and loaded there through ``LOWPREC_DATA_DIR``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lowprec.data.corpus import Corpus, Document

TOKEN_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}
TOKENS_FILE, DOCUMENTS_FILE, META_FILE = "tokens.bin", "documents.tsv", "corpus.json"
_COLUMNS = ("source", "group", "name", "start", "length")


def dtype_for(vocab_size: int) -> str:
    """The narrowest stored dtype that holds ids below ``vocab_size`` (uint32 beyond 65536:
    corpus.json records which, so corpora written with uint8/uint16 load as before)."""
    for name in TOKEN_DTYPES:
        if vocab_size <= int(np.iinfo(TOKEN_DTYPES[name]).max) + 1:
            return name
    raise ValueError(f"vocab_size {vocab_size} does not fit any token dtype (at most {2 ** 32})")


def token_dtype(name: str) -> np.dtype:
    if name not in TOKEN_DTYPES:
        raise ValueError(f"unknown token dtype '{name}'; known: {', '.join(TOKEN_DTYPES)}")
    return np.dtype(TOKEN_DTYPES[name]).newbyteorder("<")


def write_tokens(path: str | os.PathLike, tokens, dtype: str = "uint8") -> Path:
    """Write a 1-D token array as a raw file that ``read_tokens`` memory-maps back."""
    dt = token_dtype(dtype)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D; got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(dt).max):
        raise ValueError(f"token ids [{tokens.min()}, {tokens.max()}] do not fit dtype {dtype}")
    path = Path(path)
    tokens.astype(dt).tofile(path)
    return path


def read_tokens(path: str | os.PathLike, dtype: str = "uint8") -> np.ndarray:
    """Memory-map a raw token file read-only (nothing is loaded until sliced)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"token file is empty: {path}")
    dt = token_dtype(dtype)
    if path.stat().st_size % dt.itemsize:
        raise ValueError(f"{path} has {path.stat().st_size} bytes, not a whole number of "
                         f"{dtype} tokens")
    return np.memmap(path, dtype=dt, mode="r")


def is_prepared(directory: str | os.PathLike) -> bool:
    return (Path(directory) / META_FILE).is_file()


def write_documents(path: Path, documents) -> None:
    lines = ["\t".join(_COLUMNS)]
    for d in documents:
        fields = (d.source, d.group, d.name, str(d.start), str(d.length))
        if any(c in f for f in fields for c in "\t\n"):
            raise ValueError(f"document fields may not contain tabs or newlines: {fields}")
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_meta(directory: Path, meta: dict) -> None:
    """Write ``corpus.json`` atomically: the marker that the directory is complete."""
    tmp = directory / (META_FILE + ".partial")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(directory / META_FILE)


def read_meta(directory: str | os.PathLike) -> dict:
    return json.loads((Path(directory) / META_FILE).read_text(encoding="utf-8"))


def read_corpus(directory: str | os.PathLike) -> Corpus:
    """Load a prepared corpus directory (the token stream stays on disk, memory-mapped)."""
    directory = Path(directory)
    meta = read_meta(directory)
    tokens = read_tokens(directory / TOKENS_FILE, meta["dtype"])
    if tokens.size != meta["num_tokens"]:
        raise ValueError(f"{directory / TOKENS_FILE} has {tokens.size} tokens; corpus.json "
                         f"says {meta['num_tokens']} (incomplete copy?)")
    rows = (directory / DOCUMENTS_FILE).read_text(encoding="utf-8").splitlines()
    if tuple(rows[0].split("\t")) != _COLUMNS:
        raise ValueError(f"{directory / DOCUMENTS_FILE}: header must be {_COLUMNS}")
    docs = []
    for row in rows[1:]:
        source, group, name, start, length = row.split("\t")
        docs.append(Document(source, group, name, int(start), int(length)))
    return Corpus(tokens, tuple(docs), int(meta["vocab_size"]), float(meta.get("bytes_per_token", 1.0)))
