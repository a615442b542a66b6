"""``data_seed`` sets the data order alone and ``seed`` everything else: taken from the loop's
own setup and batch iterator (the run stops before its first step, so nothing compiles)."""

import jax
import numpy as np
import pytest

from lowprec import data as lpdata
from lowprec.train import loop
from tests.train.test_train import smoke

BATCHES = 3


class _Stop(Exception):
    """Raised by the recording iterator once it has its batches."""


def first_of_run(workdir, monkeypatch, **overrides) -> dict:
    """The initial parameters and first ``BATCHES`` training batches of ``smoke(**overrides)``."""
    seen, real_setup = {}, loop.setup

    def setup(*args, **kwargs):
        built = real_setup(*args, **kwargs)
        seen["params"] = [np.asarray(x) for x in jax.tree.leaves(built.state.params)]
        return built

    class Recording(lpdata.Batches):
        def __next__(self):
            seen["batches"] = []
            for _ in range(BATCHES):
                seen["batches"].append(np.asarray(super().__next__()))
            raise _Stop

    monkeypatch.setattr(loop, "setup", setup)
    monkeypatch.setattr(loop.lpdata, "Batches", Recording)
    cfg = smoke(**{"mesh.devices": 1, **overrides})
    with pytest.raises(_Stop):
        loop.train(cfg, str(workdir))
    monkeypatch.undo()
    return {**seen, "cfg": cfg}


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_data_seed_sets_the_data_order_and_seed_the_initialization(tmp_path, monkeypatch):
    default = first_of_run(tmp_path / "a", monkeypatch, seed=0)
    other_data = first_of_run(tmp_path / "b", monkeypatch, seed=0, data_seed=5)
    other_init = first_of_run(tmp_path / "c", monkeypatch, seed=1, data_seed=5)

    # Same seed, another data_seed: the same initial parameters, other batches.
    assert same(default["params"], other_data["params"])
    assert not any(np.array_equal(x, y) for x, y in zip(default["batches"], other_data["batches"]))
    # Same data_seed, another seed: the same batches, other initial parameters.
    assert same(other_data["batches"], other_init["batches"])
    assert not same(other_data["params"], other_init["params"])

    # The default (-1) is the data order of every run before data_seed: Batches seeded by seed.
    cfg = default["cfg"]
    assert cfg.data_seed == -1
    train_split, _ = loop.load_corpus(cfg).split()
    before = lpdata.Batches(train_split, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size, seed=cfg.seed)
    assert same(default["batches"], [before.batch(s) for s in range(BATCHES)])
    # and data_seed=seed spelled out is the same order as the default.
    assert same(first_of_run(tmp_path / "d", monkeypatch, seed=1, data_seed=1)["batches"],
                [lpdata.Batches(train_split, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
                                seed=1).batch(s) for s in range(BATCHES)])
