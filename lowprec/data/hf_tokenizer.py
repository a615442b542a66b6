"""A Hugging Face ``tokenizer.json`` (the ``tokenizers`` package) as a pipeline Tokenizer, so text
is tokenized as a loaded checkpoint expects."""

from __future__ import annotations

import os

import numpy as np


class HFTokenizer:
    """``tokenizer.json`` behind the pipeline's Tokenizer interface. ``eot_token`` separates
    documents (default: the first of ``</s>``, ``<|endoftext|>``, ``<|end_of_text|>`` present)."""

    EOT_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>")

    def __init__(self, path: str, eot_token: str | None = None):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError("HFTokenizer needs tokenizers: pip install 'lowprec[hf]'") from e
        self._tok = Tokenizer.from_file(path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        names = (eot_token,) if eot_token else self.EOT_CANDIDATES
        ids = [self._tok.token_to_id(n) for n in names if self._tok.token_to_id(n) is not None]
        if not ids:
            raise ValueError(f"eot_token={eot_token!r} is not in {path}; tried: {', '.join(names)}")
        self.eot_id = ids[0]

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).ravel()], skip_special_tokens=False)


TOKENIZER_FILE = "tokenizer.json"


def tokenizer_file(path: str) -> str:
    """``path`` itself (a ``tokenizer.json``) or the ``tokenizer.json`` in directory ``path``."""
    path = os.path.expanduser(str(path))
    file = os.path.join(path, TOKENIZER_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"data.tokenizer {str(path)!r}: no {TOKENIZER_FILE} there "
                                "(give a tokenizer.json or a Hugging Face directory holding one)")
    return file


def load_tokenizer(path: str, eot_token: str | None = None) -> HFTokenizer:
    """The HFTokenizer of a ``tokenizer.json`` or of a Hugging Face directory holding one."""
    return HFTokenizer(tokenizer_file(path), eot_token)
