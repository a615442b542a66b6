"""HFTokenizer: a tokenizer.json read with the tokenizers package, behind the Tokenizer interface."""

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from lowprec.data import sources  # noqa: E402
from lowprec.data.hf_tokenizer import HFTokenizer  # noqa: E402

TEXT = "the cat sat on the mat. the dog sat on the log."


@pytest.fixture
def path(tmp_path):
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator([TEXT] * 20, tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "</s>"], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    return str(tmp_path / "tokenizer.json")


def test_encode_decode_round_trip_and_eot(path):
    tok = HFTokenizer(path)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and len(ids) < len(TEXT)  # merges learned: fewer tokens than bytes
    assert tok.decode([tok.eot_id]) == "</s>" and tok.vocab_size > 256


def test_a_corpus_tokenized_with_it(path, tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    tok = HFTokenizer(path)
    corpus = sources.load_text(str(tmp_path / "a.txt"), tokenizer=tok)
    want = tok.encode(TEXT)
    np.testing.assert_array_equal(corpus.tokens[:len(want)], want)
    assert corpus.vocab_size == tok.vocab_size and corpus.tokens.dtype == np.uint16


def test_a_missing_eot_token_is_named(path):
    with pytest.raises(ValueError, match=r"eot_token='<eos>' is not in"):
        HFTokenizer(path, eot_token="<eos>")
