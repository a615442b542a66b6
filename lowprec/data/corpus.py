"""A corpus is one token stream plus an index of its documents; splits are spans of it.

The train/validation split is by document group (e.g. all spellings of one play, one Python
package), chosen by a hash of the source and group names: it needs no seed, is the same on every
machine, and the validation documents of a source stay the same whatever other sources are
loaded beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

DEFAULT_VAL_FRACTION = 0.015


@dataclasses.dataclass(frozen=True)
class Document:
    """One document of a token stream: ``tokens[start:start + length]``.

    ``length`` includes the separator token that ends the document, if the stream has one.
    Documents of the same ``group`` always fall on the same side of the train/val split.
    """

    source: str
    group: str
    name: str
    start: int
    length: int


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Part of a corpus: the ``[start, stop)`` spans of ``tokens`` that belong to it."""

    name: str
    tokens: np.ndarray
    spans: tuple[tuple[int, int], ...]
    vocab_size: int

    @property
    def num_tokens(self) -> int:
        return sum(stop - start for start, stop in self.spans)


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """A 1-D token array (often a read-only ``np.memmap``) and the documents laid out in it."""

    tokens: np.ndarray
    documents: tuple[Document, ...]
    vocab_size: int
    bytes_per_token: float = 1.0  # text bytes per token (1 for bytes; ~3 for a 4096-token BPE)

    def sources(self) -> list[str]:
        return sorted({d.source for d in self.documents})

    def select(self, include: str | Sequence[str] | None = None,
               exclude: str | Sequence[str] | None = None) -> Corpus:
        """The documents of some sources only, e.g. ``include="shakespeare"`` for a domain
        study, or ``exclude="shakespeare"`` for everything else. Names may be comma-separated."""
        include, exclude = _names(include), _names(exclude)
        known = self.sources()
        for field, names in (("include", include), ("exclude", exclude)):
            unknown = sorted(set(names) - set(known))
            if unknown:
                raise ValueError(f"unknown source {', '.join(map(repr, unknown))} in {field}; "
                                 f"this corpus has: {', '.join(known)}")
        keep = [d for d in self.documents
                if (not include or d.source in include) and d.source not in exclude]
        if not keep:
            raise ValueError(f"include={include} exclude={exclude} leaves no documents")
        return dataclasses.replace(self, documents=tuple(keep))

    def split(self, val_fraction: float = DEFAULT_VAL_FRACTION) -> tuple[Split, Split]:
        """(train, val). Per source, whole groups go to val in hash order until about
        ``val_fraction`` of the source's tokens; a source with a single group (one file, a
        synthetic stream) holds out the last ``val_fraction`` of its tokens instead."""
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
        train, val = [], []
        by_source: dict[str, list[Document]] = {}
        for d in self.documents:
            by_source.setdefault(d.source, []).append(d)
        for source, docs in by_source.items():
            groups = {d.group for d in docs}
            if len(groups) == 1:
                t, v = _tail_holdout([(d.start, d.start + d.length) for d in docs], val_fraction)
                train += t
                val += v
                continue
            held = _val_groups(source, docs, val_fraction)
            for d in docs:
                (val if d.group in held else train).append((d.start, d.start + d.length))
        return (Split("train", self.tokens, _merge(train), self.vocab_size),
                Split("val", self.tokens, _merge(val), self.vocab_size))


def _names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else value
    return tuple(p.strip() for p in parts if p.strip())


def _val_groups(source: str, docs: list[Document], fraction: float) -> set[str]:
    """Groups in hash order that fit within the budget; at least one, never all of them."""
    sizes: dict[str, int] = {}
    for d in docs:
        sizes[d.group] = sizes.get(d.group, 0) + d.length
    if fraction == 0.0:
        return set()
    order = sorted(sizes, key=lambda g: hashlib.sha256(f"{source}\0{g}".encode()).digest())
    budget, taken, held = fraction * sum(sizes.values()), 0, set()
    for g in order[:-1]:
        if taken + sizes[g] <= budget:
            held.add(g)
            taken += sizes[g]
    return held or {min(order, key=lambda g: sizes[g])}


def _tail_holdout(ranges: list[tuple[int, int]], fraction: float):
    total = sum(b - a for a, b in ranges)
    cut = total - int(round(fraction * total))
    train, val, seen = [], [], 0
    for a, b in ranges:
        k = min(max(cut - seen, 0), b - a)
        if k:
            train.append((a, a + k))
        if a + k < b:
            val.append((a + k, b))
        seen += b - a
    return train, val


def _merge(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)
