"""Dense bit packing of integer codes (two 4-bit codes per byte, four 6-bit codes in 3 bytes, ...)."""

from __future__ import annotations

import jax.numpy as jnp


def pack(codes, bits: int):
    """Packs the last axis of ``codes`` (< 2**bits each) into uint8, little-endian bit order.

    The ``n * bits`` bits of a row are zero-padded to whole bytes (``ceil(n * bits / 8)`` of
    them); ``unpack`` needs ``n`` back.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8; got {bits}")
    codes = jnp.asarray(codes).astype(jnp.uint8)
    lead = codes.shape[:-1]
    stream = (codes[..., None] >> _positions(bits, codes.ndim + 1) & 1).reshape(*lead, -1)
    stream = jnp.pad(stream, [(0, 0)] * len(lead) + [(0, (-stream.shape[-1]) % 8)])
    flat = stream.reshape(*lead, -1, 8)
    return jnp.sum(flat << _positions(8, flat.ndim), axis=-1, dtype=jnp.uint8)


def unpack(packed, bits: int, length: int):
    """Inverse of ``pack``: the first ``length`` codes of each packed row, as uint8."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8; got {bits}")
    packed = jnp.asarray(packed, jnp.uint8)
    lead = packed.shape[:-1]
    stream = (packed[..., None] >> _positions(8, packed.ndim + 1) & 1).reshape(*lead, -1)
    if stream.shape[-1] < length * bits:
        raise ValueError(f"packed data holds {stream.shape[-1] // bits} codes; asked for {length}")
    per_code = stream[..., :length * bits].reshape(*lead, length, bits)
    return jnp.sum(per_code << _positions(bits, per_code.ndim), axis=-1, dtype=jnp.uint8)


def _positions(n: int, ndim: int):
    """Bit positions 0..n-1 along a last axis of an ``ndim``-D array (explicit rank: no promotion)."""
    return jnp.arange(n, dtype=jnp.uint8).reshape((1,) * (ndim - 1) + (n,))
