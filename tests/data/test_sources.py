"""Sources by name: text files and globs, memory-mapped token files, the synthetic stream."""

import numpy as np
import pytest

from lowprec.data import ByteTokenizer, load, read_tokens, source_names, write_tokens
from lowprec.data.synthetic import ALPHABET


def test_unknown_source_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown data source 'wiki'; known: debian_v1, "
                                         r"default, pypi_v1, synthetic, text, tokens"):
        load("wiki")
    assert {"pypi_v1", "debian_v1", "default", "synthetic", "text", "tokens"} <= set(source_names())


def test_text_files_by_glob_are_documents(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "sub" / "b.txt").write_text("beta ✓\n")
    corpus = load("text", path=f"{tmp_path}/**/*.txt")
    assert [d.name for d in corpus.documents] == [str(tmp_path / "a.txt"),
                                                  str(tmp_path / "sub" / "b.txt")]
    tok = ByteTokenizer()
    first, second = corpus.documents
    assert tok.decode(corpus.tokens[first.start:first.start + first.length]) == "alpha\n\0"
    assert tok.decode(corpus.tokens[second.start:second.start + second.length - 1]) == "beta ✓\n"
    with pytest.raises(FileNotFoundError, match="matches no file"):
        load("text", f"{tmp_path}/*.md")


@pytest.mark.parametrize("dtype,vocab", [("uint8", 256), ("uint16", 50_000)])
def test_token_file_memmap_round_trip(tmp_path, dtype, vocab):
    ids = (np.arange(10_000) * 7919) % vocab
    path = write_tokens(tmp_path / f"t.{dtype}.bin", ids, dtype)
    assert path.stat().st_size == ids.size * np.dtype(dtype).itemsize
    back = read_tokens(path, dtype)
    assert isinstance(back, np.memmap) and np.array_equal(back, ids)
    corpus = load("tokens", path=str(path), dtype=dtype, vocab_size=vocab)
    assert corpus.vocab_size == vocab and np.array_equal(corpus.tokens, ids)


def test_token_file_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown token dtype 'int64'; known: uint8, uint16"):
        write_tokens(tmp_path / "x.bin", [1, 2], "int64")
    with pytest.raises(ValueError, match="do not fit dtype uint8"):
        write_tokens(tmp_path / "x.bin", [1, 256], "uint8")
    with pytest.raises(FileNotFoundError, match="token file not found"):
        load("tokens", path=str(tmp_path / "missing.bin"))
    (tmp_path / "odd.bin").write_bytes(b"\1\2\3")
    with pytest.raises(ValueError, match="whole number of uint16"):
        read_tokens(tmp_path / "odd.bin", "uint16")


def test_synthetic_is_deterministic_and_structured():
    a = load("synthetic", num_tokens=20_000, seed=3).tokens
    assert np.array_equal(a, load("synthetic", num_tokens=20_000, seed=3).tokens)
    assert not np.array_equal(a, load("synthetic", num_tokens=20_000, seed=4).tokens)
    assert set(np.unique(a)) <= set(ALPHABET.tolist())
    # Learnable: each character is followed by exactly `branching` distinct characters.
    successors = {}
    for x, y in zip(a[:-1].tolist(), a[1:].tolist()):
        successors.setdefault(x, set()).add(y)
    assert {len(s) for s in successors.values()} == {4}


def test_empty_path_means_the_source_default():
    assert load("synthetic", "", num_tokens=100).tokens.size == 100


def test_include_applies_to_any_source():
    with pytest.raises(ValueError, match="unknown source 'shakespeare' in include"):
        load("synthetic", num_tokens=1000, include="shakespeare")
