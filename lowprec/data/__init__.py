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
from lowprec.data.corpus import Corpus, Document, Split
from lowprec.data.pinned import CorpusNotFoundError
from lowprec.data.sharding import batch_sharding, global_batch
from lowprec.data.sources import load, register_source, source_names
from lowprec.data.store import read_tokens, write_tokens
from lowprec.data.tokenizer import ByteTokenizer

__all__ = [
    "Batches", "ByteTokenizer", "Corpus", "CorpusBuildError", "CorpusNotFoundError", "Document", "EvalBatches",
    "Split", "Windows", "batch_sharding", "global_batch", "load", "read_tokens", "register_source",
    "source_names", "write_tokens",
]
