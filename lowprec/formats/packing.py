"""Dense bit packing of integer codes (two 4-bit codes per byte, four 6-bit codes in 3 bytes, ...)."""

from __future__ import annotations

import jax.numpy as jnp


def pack(codes, bits: int):
    """Packs the last axis of ``codes`` (< 2**bits each) into uint8, little-endian bit order.

    The last axis is zero-padded to a whole number of bytes; ``unpack`` needs its length back.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8; got {bits}")
    codes = jnp.asarray(codes).astype(jnp.uint8)
    n = codes.shape[-1]
    pad = (-n * bits) % 8 // bits
    while (n + pad) * bits % 8:
        pad += 1
    codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, pad)])
    bit_planes = (codes[..., None] >> jnp.arange(bits, dtype=jnp.uint8)) & 1
    flat = bit_planes.reshape(*codes.shape[:-1], -1, 8)
    return jnp.sum(flat << jnp.arange(8, dtype=jnp.uint8), axis=-1, dtype=jnp.uint8)


def unpack(packed, bits: int, length: int):
    """Inverse of ``pack``: the first ``length`` codes of each packed row, as uint8."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8; got {bits}")
    packed = jnp.asarray(packed, jnp.uint8)
    bit_planes = (packed[..., None] >> jnp.arange(8, dtype=jnp.uint8)) & 1
    per_code = bit_planes.reshape(*packed.shape[:-1], -1, bits)
    codes = jnp.sum(per_code << jnp.arange(bits, dtype=jnp.uint8), axis=-1, dtype=jnp.uint8)
    if codes.shape[-1] < length:
        raise ValueError(f"packed data holds {codes.shape[-1]} codes; asked for {length}")
    return codes[..., :length]
