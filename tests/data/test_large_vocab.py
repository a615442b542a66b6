"""data.tokenizer: text tokenized with a tokenizer.json; ids past 65536 stored as uint32 (recorded
in corpus.json, so uint8/uint16 corpora load as before); model.vocab_size checked against it."""

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from configs import lm  # noqa: E402
from lowprec.data import sources, store  # noqa: E402
from lowprec.data.corpus import Document  # noqa: E402
from lowprec.train import build, finetune  # noqa: E402
from lowprec.train.config_check import ConfigError  # noqa: E402

N = 70000  # past uint16


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A word-level tokenizer of N words w0..w{N-1} plus </s>, and a text file using its top ids."""
    d = tmp_path_factory.mktemp("big")
    vocab = {f"w{i}": i for i in range(N)}
    vocab["</s>"] = N
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(d / "tokenizer.json"))
    ids = [69999, 5, 65536, 65535, 123, 69998] * 10
    (d / "a.txt").write_text(" ".join(f"w{i}" for i in ids))
    return d, ids


def test_text_with_a_large_vocabulary_is_stored_as_uint32(big, tmp_path):
    d, ids = big
    corpus = sources.load("text", str(d / "a.txt"), tokenizer=str(d))  # a directory holding tokenizer.json
    assert corpus.tokens.dtype == np.uint32 and corpus.vocab_size == N + 1
    np.testing.assert_array_equal(corpus.tokens, [*ids, N])  # the document separator </s> last
    # A prepared corpus directory round-trips: corpus.json records the dtype.
    store.write_tokens(tmp_path / store.TOKENS_FILE, corpus.tokens, store.dtype_for(corpus.vocab_size))
    store.write_documents(tmp_path / store.DOCUMENTS_FILE, [Document("text", "a", "a", 0, corpus.tokens.size)])
    store.write_meta(tmp_path, {"dtype": "uint32", "vocab_size": corpus.vocab_size, "num_tokens": corpus.tokens.size})
    back = store.read_corpus(tmp_path)
    assert back.tokens.dtype == np.dtype("<u4")
    np.testing.assert_array_equal(back.tokens, corpus.tokens)
    assert [store.dtype_for(v) for v in (256, 257, 65536, 65537)] == ["uint8", "uint16", "uint16", "uint32"]


def test_uint16_corpora_still_load(tmp_path):
    tokens = np.array([1, 65535, 7], np.uint16)
    store.write_tokens(tmp_path / store.TOKENS_FILE, tokens, "uint16")
    store.write_documents(tmp_path / store.DOCUMENTS_FILE, [Document("s", "g", "n", 0, 3)])
    store.write_meta(tmp_path, {"dtype": "uint16", "vocab_size": 65536, "num_tokens": 3})
    back = store.read_corpus(tmp_path)
    assert back.tokens.dtype == np.dtype("<u2")
    np.testing.assert_array_equal(back.tokens, tokens)


def config(d, **fields):
    cfg = lm.get_config("smoke")
    cfg.data.source, cfg.data.path, cfg.data.tokenizer = "text", str(d / "a.txt"), str(d / "tokenizer.json")
    for k, v in fields.items():
        cfg.model[k] = v
    return cfg


def test_the_run_config_tokenizes_text_and_checks_the_vocabulary(big):
    d, ids = big
    with pytest.raises(ConfigError, match=r"data.tokenizer .* has 70001 tokens but model.vocab_size is 256"):
        finetune.resolve_model(config(d))
    cfg = config(d, vocab_size=N + 1)
    assert finetune.resolve_model(cfg) is cfg  # nothing to change
    corpus = build.load_corpus(cfg)
    np.testing.assert_array_equal(corpus.tokens[:len(ids)], ids)
    wrong = config(d, vocab_size=N + 1)
    wrong.data.source = "synthetic"
    with pytest.raises(ConfigError, match="data.tokenizer=.*needs data.source='text'"):
        finetune.resolve_model(wrong)
