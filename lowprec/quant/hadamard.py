"""Block Walsh-Hadamard transforms of an operand along one axis, optionally with random signs (RHT).

Every block of ``size`` consecutive elements along the axis, as a row vector ``u``, becomes
``u @ H @ S``: ``H`` the Sylvester Hadamard matrix of order ``size`` divided by sqrt(size)
(orthogonal, entries +-1/sqrt(size)), ``S`` a diagonal of +-1 signs (the identity when
``signs="none"``). Applied to *both* operands of a GEMM along the axes they contract, it leaves
the product unchanged up to rounding, ``(u H S)(v H S)^T = u v^T``, while spreading a block's
outliers over the block before the operands are quantized (Transformer Engine's NVFP4 RHT:
16x16 ``H``, ``S`` redrawn every iteration).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

SIZES = (16, 32, 64, 128)
SIGNS = ("none", "key", "seed")


@dataclasses.dataclass(frozen=True)
class Hadamard:
    """A block Hadamard transform; a frozen, hashable value (static under jit).

    ``size``: the block (16, 32, 64 or 128). ``signs``: ``"none"`` (plain Walsh-Hadamard),
    ``"key"`` (random signs drawn from the key the GEMM is given: a new ``S`` every step) or
    ``"seed"`` (random signs from ``jax.random.key(seed)``: one fixed ``S``).
    ``signs_first``: ``u @ S @ H`` instead of ``u @ H @ S`` (the signs flip the input before the
    Hadamard mixes it, as Tseng et al.'s MXFP4 code does; Transformer Engine's NVFP4 is ``H S``).
    """

    size: int = 16
    signs: str = "none"
    seed: int = 0
    signs_first: bool = False

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"Hadamard.size must be one of {', '.join(map(str, SIZES))}; got {self.size!r}")
        if self.signs not in SIGNS:
            raise ValueError(f"unknown Hadamard.signs {self.signs!r}; known: {', '.join(SIGNS)}")

    def __str__(self) -> str:
        if self.signs == "none":
            return f"H({self.size})"
        return (f"RHT({self.size}, signs={self.signs}" + (f", seed={self.seed}" if self.signs == "seed" else "")
                + (", signs_first)" if self.signs_first else ")"))

    @property
    def needs_key(self) -> bool:
        return self.signs == "key"

    def sign_vector(self, key=None) -> jax.Array | None:
        """The diagonal of ``S`` (+-1, float32), or None for no signs."""
        if self.signs == "none":
            return None
        if self.signs == "seed":
            key = jax.random.key(self.seed)
        elif key is None:
            raise ValueError(f"{self}: random signs from the step's key need key=jax.random.key(...)")
        return jnp.where(jax.random.bernoulli(key, 0.5, (self.size,)), 1.0, -1.0).astype(jnp.float32)

    def apply(self, x, axis: int, key=None) -> jax.Array:
        """``x`` with every block of ``size`` along ``axis`` mapped to ``u @ H @ S`` (in f32 or
        wider, ``x``'s dtype kept when it is wider than f32)."""
        return transform(x, axis, self.size, self.sign_vector(key), signs_first=self.signs_first)

    def invert(self, y, axis: int, key=None) -> jax.Array:
        """The inverse of ``apply`` (``v @ S @ H^T``, or ``v @ H^T @ S`` with ``signs_first``)."""
        return transform(y, axis, self.size, self.sign_vector(key), inverse=True, signs_first=self.signs_first)


def matrix(size: int) -> np.ndarray:
    """The orthonormal Sylvester Hadamard matrix of order ``size`` (float64): H_2n = [[H, H], [H, -H]] / sqrt(2)."""
    if size < 1 or size & (size - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power-of-two order; got {size}")
    h = np.ones((1, 1))
    while h.shape[0] < size:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(size)


def transform(x, axis: int, size: int, signs=None, inverse: bool = False, signs_first: bool = False) -> jax.Array:
    """Blocks of ``size`` along ``axis`` times ``H @ diag(signs)`` (``inverse``: ``diag(signs) @ H^T``);
    ``signs_first``: times ``diag(signs) @ H`` (``inverse``: ``H^T @ diag(signs)``)."""
    x = jnp.asarray(x)
    axis = axis % x.ndim
    n = x.shape[axis]
    if n % size:
        raise ValueError(f"Hadamard of size {size} along axis {axis}: its length {n} is not a multiple of {size}")
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    h = jnp.asarray(matrix(size), dtype)
    xb = jnp.moveaxis(x.astype(dtype), axis, -1)
    xb = xb.reshape(xb.shape[:-1] + (n // size, size))
    if signs is not None:
        signs = signs.astype(dtype).reshape((1,) * (xb.ndim - 1) + (size,))
    before = inverse != signs_first  # whether the signs multiply the input (else the output)
    if before and signs is not None:
        xb = xb * signs
    y = jnp.einsum("...i,ij->...j", xb, h.T if inverse else h, precision=jax.lax.Precision.HIGHEST)
    if not before and signs is not None:
        y = y * signs
    return jnp.moveaxis(y.reshape(y.shape[:-2] + (n,)), -1, axis)
