"""A synthetic byte stream for tests and smoke runs: free, deterministic, and learnable.

A Markov chain on 32 text characters: from state ``s`` the next state is ``s + d`` (mod 32)
for one of ``branching`` fixed offsets ``d``, chosen uniformly. A model that learns the
successor table reaches ``ln(branching)`` nats per token (1.39 for 4) from ``ln(256)`` = 5.55
for a uniform guess, so a falling loss is visible within a few dozen steps.
"""

from __future__ import annotations

import numpy as np

from lowprec.data.permutation import mix, permute, splitmix64

ALPHABET = np.frombuffer(b" etaoinshrdlucmfwypvbgkjqxz.,;\n'", dtype=np.uint8)


def markov_bytes(num_tokens: int, seed: int = 0, branching: int = 4) -> np.ndarray:
    """``num_tokens`` uint8 tokens of the chain; the same for the same arguments everywhere."""
    states = len(ALPHABET)
    if not 1 <= branching < states:
        raise ValueError(f"branching must be in [1, {states - 1}]; got {branching}")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be positive; got {num_tokens}")
    offsets = permute(np.arange(branching), states - 1, mix(seed, 1)) + 1
    draws = splitmix64(np.arange(num_tokens, dtype=np.uint64) ^ np.uint64(mix(seed, 2)))
    choice = (draws >> np.uint64(32)) % np.uint64(branching)
    state = np.cumsum(offsets[choice.astype(np.int64)]) % states
    return ALPHABET[state]
