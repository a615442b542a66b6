"""The byte tokenizer: vocabulary 256, exact round trips, clear range errors."""

import numpy as np
import pytest

from lowprec.data import ByteTokenizer


def test_round_trip_unicode_and_invalid_bytes():
    tok = ByteTokenizer()
    text = "To be, or not to be — ∑ ✓\n"
    ids = tok.encode(text)
    assert ids.dtype == np.uint8 and len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    raw = b"caf\xe9 \xff"  # not UTF-8: kept exactly through surrogateescape
    assert bytes(tok.encode(raw.decode("utf-8", "surrogateescape"))) == raw


def test_vocab_and_separator():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 and tok.eot_id == 0
    assert 0 not in tok.encode("plain text")


def test_decode_out_of_range_names_the_range():
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        ByteTokenizer().decode([65, 300])
