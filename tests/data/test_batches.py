"""Training batches: deterministic, resumable, one epoch covers every window once;
evaluation batches: every validation window exactly once."""

import numpy as np
import pytest

from lowprec.data import Batches, Corpus, Document, EvalBatches, Split, Windows, load


@pytest.fixture(scope="module")
def splits():
    return load("synthetic", num_tokens=50_000, seed=0).split(0.02)


def test_same_seed_same_batches_other_seed_other_batches(splits):
    train, _ = splits
    a = Batches(train, seq_len=32, batch_size=8, seed=1)
    b = Batches(train, seq_len=32, batch_size=8, seed=1)
    c = Batches(train, seq_len=32, batch_size=8, seed=2)
    first = [next(a) for _ in range(5)]
    assert all(np.array_equal(x, next(b)) for x in first)
    assert not np.array_equal(first[0], next(c))
    assert first[0].shape == (8, 33) and first[0].dtype == np.int32


def test_resume_from_state_sees_the_same_batches(splits):
    train, _ = splits
    straight = Batches(train, seq_len=16, batch_size=4, seed=5)
    expected = [next(straight) for _ in range(12)]
    first = Batches(train, seq_len=16, batch_size=4, seed=5)
    for _ in range(7):
        next(first)
    state = dict(first.state())  # what a checkpoint stores
    resumed = Batches(train, seq_len=16, batch_size=4, seed=5)
    resumed.restore(state)
    assert state["step"] == 7
    for want in expected[7:]:
        assert np.array_equal(next(resumed), want)


def test_restore_refuses_other_settings(splits):
    train, _ = splits
    state = Batches(train, seq_len=16, batch_size=4, seed=5).state()
    with pytest.raises(ValueError, match="batch_size=4, this iterator batch_size=8"):
        Batches(train, seq_len=16, batch_size=8, seed=5).restore(state)


def test_rows_are_slices_of_the_batch(splits):
    train, _ = splits
    b = Batches(train, seq_len=16, batch_size=8, seed=0)
    assert np.array_equal(b.rows(3, 2, 6), b.batch(3)[2:6])


def test_rows_are_aligned_windows_of_the_train_split(splits):
    train, _ = splits
    b = Batches(train, seq_len=16, batch_size=8, seed=0)
    (start, stop), = train.spans
    tokens = np.asarray(train.tokens[start:stop])
    aligned = {tuple(w) for w in np.lib.stride_tricks.sliding_window_view(tokens, 17)[::16]}
    assert all(tuple(row) in aligned for row in b.batch(0))


def test_an_epoch_covers_every_window_once_then_reshuffles():
    corpus = Corpus(np.arange(1000, dtype=np.int32), (Document("s", "g", "g", 0, 1000),), 1000)
    train, _ = corpus.split(0.0)
    b = Batches(train, seq_len=9, batch_size=11, seed=0)
    assert b.windows.count == 111  # windows start at 0, 9, ..., 990
    firsts = np.concatenate([b.batch(s)[:, 0] for s in range(21)])  # 231 rows: 2 epochs + 9
    assert sorted(firsts[:111].tolist()) == list(range(0, 999, 9))
    assert sorted(firsts[111:222].tolist()) == list(range(0, 999, 9))
    assert not np.array_equal(firsts[:111], firsts[111:222])
    assert b.epoch(21) == 231 / 111


def test_windows_skip_short_spans_and_never_cross_a_span_end():
    split = Split("train", np.arange(400, dtype=np.int32),
                  ((0, 10), (50, 150), (200, 205), (300, 350)), 400)
    w = Windows(split, seq_len=20)  # windows per span: 0, 4, 0, 2
    assert w.count == 6
    firsts = w.gather(np.arange(6))[:, 0].tolist()
    assert firsts == [50, 70, 90, 110, 300, 320]


def test_eval_covers_the_validation_split_exactly_once(splits):
    _, val = splits
    e = EvalBatches(val, seq_len=16, batch_size=7)
    rows, n = [], e.windows.count
    for tokens, valid in e:
        assert tokens.shape == (7, 17) and valid.shape == (7,)
        rows += [tuple(r) for r in tokens[valid]]
    assert len(e) == -(-n // 7) and len(rows) == n
    expected = {tuple(e.windows.gather(np.array([i]))[0]) for i in range(n)}
    assert set(rows) == expected
    assert len(EvalBatches(val, seq_len=16, batch_size=7, max_batches=2)) == 2


def test_clear_errors_for_too_long_seq_len_and_empty_split(splits):
    train, val = splits
    with pytest.raises(ValueError, match=r"seq_len 5000 is larger than the data: .* val split "
                                         r"has 1000 tokens"):
        EvalBatches(val, seq_len=5000, batch_size=2)
    _, empty = load("synthetic", num_tokens=1000).split(0.0)
    with pytest.raises(ValueError, match="the val split is empty"):
        EvalBatches(empty, seq_len=8, batch_size=2)
