"""GPTQ-style weight rounding (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization").

Round-to-nearest rounds every weight on its own. GPTQ rounds a kernel ``W`` (in, out) one input
row at a time and moves each row's rounding error onto the rows not yet rounded, weighted by the
inverse of ``H = X^T X`` (the Gram matrix of the layer's calibration inputs ``X``), so that the
layer's *output* ``X W`` changes least. The update for row ``i``, with ``U`` the upper Cholesky
factor of ``H^-1`` (``H^-1 = U^T U``):

    e = (W[i] - Q[i]) / U[i, i];    W[j] -= U[i, j] * e   for j > i

Scales are fixed before the rounding ("static groups"): they are the round-to-nearest
quantizer's own scales of the original kernel (double-quantized ones included), so GPTQ changes
only the codes and stores exactly like round-to-nearest. Hessians come from the unquantized
model's activations (all layers in one calibration pass; the original's sequential variant
feeds each block the outputs of already-quantized blocks). ``damp`` adds ``damp * mean(diag H)``
to the diagonal; inputs that were always zero get ``H_ii = 1``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve

from lowprec.quant import Quantizer
from lowprec.quant.qtensor import QTensor
from lowprec.quant.scaling import exact_div


def inverse_hessian_factor(gram, damp: float = 0.01) -> jax.Array:
    """Upper-triangular ``U`` with ``U^T U = (H + damp * mean(diag H) I)^-1`` (``H = gram``)."""
    h = jnp.asarray(gram, jnp.float32)
    n = h.shape[-1]
    diag = jnp.diagonal(h)
    h = h + jnp.diag(jnp.where(diag == 0, 1.0, 0.0))
    h = h + damp * jnp.mean(jnp.diagonal(h)) * jnp.eye(n, dtype=h.dtype)
    hinv = cho_solve(cho_factor(h, lower=True), jnp.eye(n, dtype=h.dtype))
    return jnp.linalg.cholesky((hinv + hinv.T) / 2).T


def element_scales(quantizer: Quantizer, kernel) -> tuple[QTensor, jax.Array]:
    """(round-to-nearest QTensor of ``kernel``, the scale each element is divided by, kernel-shaped)."""
    qt = quantizer.quantize(kernel)
    s = qt.group_scales()
    if qt.tensor_scale is not None:
        s = s * qt.tensor_scale
    xg, _ = quantizer.granularity.to_groups(jnp.zeros(kernel.shape, jnp.float32))
    return qt, quantizer.granularity.from_groups(jnp.broadcast_to(s, xg.shape), kernel.shape)


def gptq(quantizer: Quantizer, kernel, gram, damp: float = 0.01) -> QTensor:
    """The QTensor of a 2-D ``kernel`` (in, out) rounded by GPTQ against ``gram`` (in, in);
    same quantizer, scales and layout as ``quantizer.quantize(kernel)``."""
    if quantizer.rounding == "stochastic":
        raise ValueError("gptq needs a deterministic rounding; the quantizer rounds stochastically")
    if kernel.ndim != 2 or gram.shape != (kernel.shape[0],) * 2:
        raise ValueError(f"gptq needs a kernel (in, out) and its gram (in, in); got {kernel.shape} and {gram.shape}")
    fmt = quantizer.format
    qt, scales = element_scales(quantizer, kernel)
    inv_scales = exact_div(jnp.ones_like(scales), scales)
    u = inverse_hessian_factor(gram, damp)
    n = kernel.shape[0]
    idx = jnp.arange(n)

    def body(i, carry):
        w, grid = carry
        g = fmt.quantize(w[i] * inv_scales[i], quantizer.rounding, None, overflow=quantizer.overflow)
        err = (w[i] - g * scales[i]) / u[i, i]
        w = w - jnp.where(idx > i, u[i], 0.0)[:, None] * err[None, :]
        return w, grid.at[i].set(g)

    w0 = jnp.asarray(kernel, jnp.float32)
    _, grid = jax.lax.fori_loop(0, n, body, (w0, jnp.zeros_like(w0)))
    grid_groups, _ = quantizer.granularity.to_groups(grid)
    return dataclasses.replace(qt, codes=fmt._encode_f32(grid_groups).astype(fmt.code_dtype))
