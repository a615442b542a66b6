"""Tokenizers: the small interface the data pipeline needs, and the default byte tokenizer."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Tokenizer(Protocol):
    """What the pipeline asks of a tokenizer; a trained BPE plugs in by providing the same."""

    vocab_size: int
    eot_id: int  # separates documents in a token stream

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to download, every byte string round-trips.

    Byte 0 (NUL), which does not occur in text, separates documents. Text read with
    ``errors="surrogateescape"`` keeps invalid UTF-8 bytes exactly.
    """

    vocab_size = 256
    eot_id = 0

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", "surrogateescape"), dtype=np.uint8).copy()

    def decode(self, ids) -> str:
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"byte token ids must lie in [0, {self.vocab_size}); "
                             f"got [{ids.min()}, {ids.max()}]")
        return ids.astype(np.uint8).tobytes().decode("utf-8", "replace")
