"""Counter-based hashing and index permutations that depend on nothing but their arguments.

Batches must be a pure function of (seed, step) on every machine and numpy version, so the
randomness here is integer arithmetic (splitmix64 and a Feistel network), not a stateful RNG
whose stream a library upgrade could change.
"""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1


def mix(*values: int) -> int:
    """A 64-bit hash of a tuple of non-negative integers (splitmix64 chained)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = int(splitmix64(np.asarray([(h ^ int(v)) & _MASK64], dtype=np.uint64))[0])
    return h


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, elementwise on a uint64 array (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def permute(index: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """Image of ``index`` (values in [0, n)) under a pseudo-random bijection of [0, n).

    A balanced Feistel network on the smallest even number of bits covering n, with cycle
    walking to stay inside [0, n): O(1) per element, so any slice of an epoch's order is
    computed without materialising the whole permutation.
    """
    index = np.asarray(index, dtype=np.int64)
    if n <= 0:
        raise ValueError(f"permute: n must be positive; got {n}")
    if index.size and (index.min() < 0 or index.max() >= n):
        raise ValueError(f"permute: indices must lie in [0, {n})")
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    round_keys = [mix(key, r) for r in range(rounds)]
    out = _feistel(index.astype(np.uint64), half, round_keys)
    outside = out >= np.uint64(n)
    while outside.any():
        out[outside] = _feistel(out[outside], half, round_keys)
        outside = out >= np.uint64(n)
    return out.astype(np.int64)


def _feistel(x: np.ndarray, half: int, round_keys: list[int]) -> np.ndarray:
    mask = np.uint64((1 << half) - 1)
    left, right = x >> np.uint64(half), x & mask
    for k in round_keys:
        left, right = right, left ^ (splitmix64(right ^ np.uint64(k)) & mask)
    return (left << np.uint64(half)) | right
