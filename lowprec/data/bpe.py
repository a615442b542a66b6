"""Byte-level BPE: train merges on a corpus, encode/decode, and re-tokenize a prepared corpus.

    tok = bpe.train(texts, vocab_size=4096)            # texts: an iterable of str
    tok.save("bpe.json"); tok = bpe.BPETokenizer.load("bpe.json")
    python -m lowprec.data.bpe --vocab 4096 --out .cache/corpus-bpe4096   # the default corpus (pypi_v1)

Tokens 0..255 are bytes (0, NUL, separates documents as in the byte tokenizer); token 256 + i
is merge i. Text is first split into words (a run of letters, digits or other symbols with at
most one leading space; runs of whitespace) and merges never cross words, so encoding is a
per-word lookup that a cache makes fast. Every byte string round-trips exactly.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import heapq
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WORD = re.compile(rb" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def words(data: bytes) -> list[bytes]:
    return WORD.findall(data)


class BPETokenizer:
    """A trained byte-level BPE (the ``Tokenizer`` protocol of ``lowprec.data``)."""

    eot_id = 0

    def __init__(self, merges: list[tuple[int, int]]):
        self.merges = [tuple(int(t) for t in m) for m in merges]
        self.vocab_size = 256 + len(self.merges)
        self.rank = {m: i for i, m in enumerate(self.merges)}
        self.pieces = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            if max(a, b) >= len(self.pieces):
                raise ValueError(f"merge {(a, b)} refers to a token not defined before it")
            self.pieces.append(self.pieces[a] + self.pieces[b])
        self._cache: dict[bytes, list[int]] = {}

    def _encode_word(self, word: bytes) -> list[int]:
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        ids = list(word)
        while len(ids) > 1:
            pairs = [(self.rank.get(p, len(self.rank)), i) for i, p in enumerate(zip(ids, ids[1:]))]
            best, i = min(pairs)
            if best == len(self.rank):
                break
            ids[i:i + 2] = [256 + best]
        if len(self._cache) < 1_000_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
        out = [t for w in words(data) for t in self._encode_word(w)]
        return np.asarray(out, dtype=np.uint16 if self.vocab_size <= 65536 else np.uint32)

    def decode(self, ids) -> str:
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}); got [{ids.min()}, {ids.max()}]")
        return b"".join(self.pieces[i] for i in ids.tolist()).decode("utf-8", "replace")

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"type": "byte_bpe", "merges": self.merges}) + "\n")

    @classmethod
    def load(cls, path) -> BPETokenizer:
        meta = json.loads(Path(path).read_text())
        if meta.get("type") != "byte_bpe":
            raise ValueError(f"{path} is not a byte-level BPE file (type {meta.get('type')!r})")
        return cls(meta["merges"])


def train(texts: Iterable[str | bytes], vocab_size: int, min_count: int = 2) -> BPETokenizer:
    """Merges learned greedily (most frequent adjacent pair, ties to the smallest pair) until
    ``vocab_size`` tokens or no pair occurs ``min_count`` times. Pair counts are kept
    incrementally (a heap with lazy deletion), so training is fast on tens of megabytes."""
    if vocab_size < 257:
        raise ValueError(f"vocab_size must exceed the 256 byte tokens; got {vocab_size}")
    counts = collections.Counter()
    for text in texts:
        counts.update(words(text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")))
    seqs = [list(w) for w in counts]
    freq = list(counts.values())
    pair_count = collections.Counter()
    where = collections.defaultdict(set)
    for i, s in enumerate(seqs):
        for p in zip(s, s[1:]):
            pair_count[p] += freq[i]
            where[p].add(i)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < vocab_size - 256 and heap:
        c, pair = heapq.heappop(heap)
        if -c != pair_count.get(pair, 0):
            continue  # stale entry
        if -c < min_count:
            break
        new = 256 + len(merges)
        merges.append(pair)
        for i in list(where.pop(pair, ())):
            s, f = seqs[i], freq[i]
            for p in zip(s, s[1:]):  # remove the word's old pairs
                pair_count[p] -= f
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and (s[j], s[j + 1]) == pair:
                    out.append(new)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out
            touched = set()
            for p in zip(out, out[1:]):
                pair_count[p] += f
                where[p].add(i)
                touched.add(p)
            for p in touched:
                heapq.heappush(heap, (-pair_count[p], p))
        pair_count.pop(pair, None)
    return BPETokenizer(merges)


def retokenize(corpus, tokenizer: BPETokenizer, out_dir, provenance: dict | None = None):
    """A prepared corpus directory (loadable with ``data.load("pypi_v1", path=out_dir)``) holding
    ``corpus`` (a byte-level ``Corpus``) re-tokenized document by document, and ``tokenizer.json``."""
    from lowprec.data.corpus import Document
    from lowprec.data.store import TOKENS_FILE, dtype_for, token_dtype, write_documents, write_meta, write_tokens

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = dtype_for(tokenizer.vocab_size)
    pieces, documents, offset = [], [], 0
    for d in corpus.documents:
        raw = np.asarray(corpus.tokens[d.start:d.start + d.length], np.uint8)
        ids = tokenizer.encode(raw[raw != 0].tobytes())  # the byte corpus ends documents with NUL
        ids = np.concatenate([ids, [tokenizer.eot_id]]).astype(token_dtype(dtype))
        pieces.append(ids)
        documents.append(Document(d.source, d.group, d.name, offset, len(ids)))
        offset += len(ids)
    tokens = np.concatenate(pieces)
    write_tokens(out_dir / TOKENS_FILE, tokens, dtype)
    write_documents(out_dir / "documents.tsv", documents)
    tokenizer.save(out_dir / "tokenizer.json")
    write_meta(out_dir, {"sha256": hashlib.sha256(tokens.astype(token_dtype(dtype)).tobytes()).hexdigest(), "dtype": dtype, "vocab_size": tokenizer.vocab_size, "num_tokens": int(tokens.size),
                         "documents": len(documents), "tokenizer": "byte_bpe", "eot_id": tokenizer.eot_id,
                         "bytes_per_token": float(sum(d.length for d in corpus.documents) / tokens.size),
                         **(provenance or {})})
    return out_dir


def main(argv=None) -> None:
    from lowprec.data import pinned
    from lowprec.data.sources import load

    p = argparse.ArgumentParser(prog="python -m lowprec.data.bpe", description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--train-bytes", type=int, default=8 << 20, help="bytes of the training split to learn merges on")
    p.add_argument("--out", required=True, help="directory of the re-tokenized corpus")
    p.add_argument("--source", default=pinned.DEFAULT, help=f"the corpus to re-tokenize (default: {pinned.DEFAULT})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    corpus = load(args.source)
    train_split, _ = corpus.split()
    fraction = min(1.0, args.train_bytes / train_split.num_tokens)  # an even slice of every training span
    sample = [np.asarray(corpus.tokens[a:a + int((b - a) * fraction)], np.uint8).tobytes().replace(b"\0", b"")
              for a, b in train_split.spans]
    total = sum(map(len, sample))
    log.info("learning %d merges on %.1f MB", args.vocab - 256, total / 1e6)
    tok = train(sample, args.vocab)
    out = retokenize(corpus, tok, args.out, {"bpe_train_bytes": total, "derived_from": args.source})
    log.info("wrote %s (set data.path=%s and model.vocab_size=%d)", out, out, tok.vocab_size)


if __name__ == "__main__":
    main()
