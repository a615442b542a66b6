"""Data: corpora, tokenizers, and deterministic, resumable, sharded batches.

    corpus = lowprec.data.load("pypi_v1")                  # or "debian_v1", "synthetic", "text", "tokens"
    train, val = corpus.split()                            # held out by document, no seed
    batches = lowprec.data.Batches(train, seq_len=512, batch_size=64, seed=0)
    tokens_BxT = next(batches)                             # (64, 513) int32; batches.state()
    for tokens, valid in lowprec.data.EvalBatches(val, seq_len=512, batch_size=64): ...

On a machine without network, copy a prepared corpus directory
(``python -m lowprec.data.prepare [--corpus NAME] --out DIR``) and set ``LOWPREC_DATA_DIR=DIR``.
"""

from lowprec.data.batches import Batches, EvalBatches, Windows
from lowprec.data.build import CorpusBuildError
from lowprec.data.corpus import DEFAULT_VAL_FRACTION, Corpus, Document, Split
from lowprec.data.pinned import DEFAULT as DEFAULT_CORPUS
from lowprec.data.pinned import CorpusNotFoundError, PinnedCorpus
from lowprec.data.pinned import get as pinned_corpus
from lowprec.data.pinned import names as corpus_names
from lowprec.data.fetch import FetchError
from lowprec.data.sharding import DATA_AXES, batch_sharding, global_batch
from lowprec.data.sources import load, register_source, source_names
from lowprec.data.store import read_tokens, write_tokens
from lowprec.data.tokenizer import ByteTokenizer, Tokenizer

__all__ = [
    "Batches", "EvalBatches", "Windows", "CorpusBuildError", "DEFAULT_VAL_FRACTION", "Corpus",
    "Document", "Split", "CorpusNotFoundError", "PinnedCorpus", "pinned_corpus", "corpus_names", "DEFAULT_CORPUS",
    "FetchError",
    "DATA_AXES", "batch_sharding", "global_batch", "load", "register_source", "source_names",
    "read_tokens", "write_tokens", "ByteTokenizer", "Tokenizer",
]
