"""Corpus selection by source and the train/val split by document group."""

import numpy as np
import pytest

from lowprec.data import Corpus, Document


def _corpus():
    """Two sources; 'plays' has two documents of one group (two spellings of a work)."""
    docs, offset = [], 0
    spec = [("plays", "hamlet", 300), ("plays", "hamlet", 280), ("plays", "lear", 250),
            ("plays", "tempest", 260), ("plays", "sonnets", 40)]
    spec += [("manual", f"chapter{i}", 100 + 7 * i) for i in range(40)]
    for i, (source, group, length) in enumerate(spec):
        docs.append(Document(source, group, f"{source}/{i}", offset, length))
        offset += length
    return Corpus(np.arange(offset, dtype=np.int64) % 251, tuple(docs), 256)


def _covered(split):
    out = np.zeros(split.tokens.size, bool)
    for a, b in split.spans:
        out[a:b] = True
    return out


def test_val_is_disjoint_from_train_and_both_cover_the_corpus():
    corpus = _corpus()
    train, val = corpus.split(0.05)
    t, v = _covered(train), _covered(val)
    assert not (t & v).any() and (t | v).all()
    assert 0 < val.num_tokens < 0.2 * corpus.tokens.size


def test_groups_stay_on_one_side():
    corpus = _corpus()
    _, val = corpus.split(0.3)
    v = _covered(val)
    for group in {d.group for d in corpus.documents}:
        sides = {bool(v[d.start]) for d in corpus.documents if d.group == group}
        assert len(sides) == 1, group


def test_split_is_deterministic_and_independent_of_other_sources():
    corpus = _corpus()
    assert [s.spans for s in corpus.split()] == [s.spans for s in corpus.split()]
    _, val_all = corpus.split(0.2)
    _, val_plays = corpus.select(include="plays").split(0.2)
    plays_in_all = [s for s in val_all.spans if s[0] < 1130]
    assert list(val_plays.spans) == plays_in_all


def test_select_include_exclude_and_unknown_source():
    corpus = _corpus()
    assert corpus.select(include="plays").sources() == ["plays"]
    assert corpus.select(exclude=["plays"]).sources() == ["manual"]
    with pytest.raises(ValueError, match=r"unknown source 'poems' in include; .*manual, plays"):
        corpus.select(include="plays,poems")


def test_single_group_source_holds_out_its_tail():
    corpus = Corpus(np.zeros(1000, np.uint8), (Document("one", "g", "g", 0, 1000),), 256)
    train, val = corpus.split(0.1)
    assert train.spans == ((0, 900),) and val.spans == ((900, 1000),)
    assert corpus.split(0.0)[1].spans == ()


def test_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        _corpus().split(1.0)
