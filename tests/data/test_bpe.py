"""Byte-level BPE: merges against a naive reference, exact round trips, a re-tokenized corpus."""

import collections

import numpy as np
import pytest

from lowprec import data as lpdata
from lowprec.data import bpe


def naive_train(texts, vocab_size):
    """The textbook algorithm: recount every pair of every word after each merge."""
    counts = collections.Counter(w for t in texts for w in bpe.words(t.encode()))
    seqs = {w: list(w) for w in counts}
    merges = []
    while len(merges) < vocab_size - 256:
        pairs = collections.Counter()
        for w, s in seqs.items():
            for p in zip(s, s[1:]):
                pairs[p] += counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        new = 256 + len(merges)
        merges.append(best)
        for w, s in seqs.items():
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and (s[j], s[j + 1]) == best:
                    out.append(new)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[w] = out
    return merges


TEXTS = ["the cat sat on the mat; the cat ate the rat.", "aaaa aaab aab ab b", "Thé naïve café — 42 + 42 = 84\n\n  x"]


def test_merges_match_the_naive_algorithm():
    tok = bpe.train(TEXTS, vocab_size=300)
    assert tok.merges == naive_train(TEXTS, 300)
    assert tok.merges[0] == (ord("a"), ord("a")) or tok.merges[0] == (ord(" "), ord("t"))
    assert tok.vocab_size == 256 + len(tok.merges)


def test_round_trip_and_compression(tmp_path):
    tok = bpe.train(TEXTS * 5, vocab_size=320)
    for text in TEXTS + ["unseen wörds \x01\x7f and\ttabs", ""]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    assert len(tok.encode(TEXTS[0])) < len(TEXTS[0].encode()) / 2
    path = tmp_path / "bpe.json"
    tok.save(path)
    assert bpe.BPETokenizer.load(path).merges == tok.merges
    with pytest.raises(ValueError, match="vocab_size"):
        bpe.train(TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="token ids"):
        tok.decode([tok.vocab_size])


def test_retokenized_corpus_keeps_documents_and_splits(tmp_path):
    files = []
    for i, t in enumerate(TEXTS * 2):
        f = tmp_path / f"doc{i}.txt"
        f.write_text(t * 20, encoding="utf-8")
        files.append(str(f))
    corpus = lpdata.load("text", ",".join(files))
    tok = bpe.train([t * 20 for t in TEXTS], vocab_size=400)
    out = bpe.retokenize(corpus, tok, tmp_path / "bpe")
    again = lpdata.load("default", path=str(out))
    assert again.vocab_size == tok.vocab_size and again.tokens.dtype == np.uint16
    assert again.bytes_per_token == pytest.approx(corpus.tokens.size / again.tokens.size) and again.bytes_per_token > 1.5
    assert [(d.source, d.name) for d in again.documents] == [(d.source, d.name) for d in corpus.documents]
    for d_bytes, d_bpe in zip(corpus.documents, again.documents):
        raw = np.asarray(corpus.tokens[d_bytes.start:d_bytes.start + d_bytes.length])
        ids = np.asarray(again.tokens[d_bpe.start:d_bpe.start + d_bpe.length])
        assert ids[-1] == tok.eot_id and tok.decode(ids[:-1]).encode() == raw[raw != 0].tobytes()
