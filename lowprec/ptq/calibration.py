"""Static activation scales from calibration data: absmax, a percentile, or an MSE search.

An activation quantizer calibrated here has ``source="delayed"``: its scale comes from a fixed
clipping value (passed as a one-entry amax history), not from each batch's own absmax, so
values beyond the clip saturate. ``dynamic`` leaves the scale to each token's absmax at run
time (no calibration).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lowprec.quant import Quantizer

METHODS = ("absmax", "percentile", "mse", "dynamic")
MSE_RATIOS = tuple(float(r) for r in np.round(np.linspace(1.0, 0.2, 17), 4))  # clip / absmax tried by "mse"


def activation_quantizer(spec: str, method: str) -> Quantizer:
    """The quantizer of a layer's input: ``spec`` a format name (``int8``, ``e4m3fn``, ``int4``,
    ...), one scale per tensor from the calibrated clip, or per token at run time (``dynamic``)."""
    check_method(method)
    try:
        if method == "dynamic":
            return Quantizer(spec, "token")
        return Quantizer(spec, "tensor", source="delayed")
    except (ValueError, KeyError) as e:
        raise ValueError(f"activation format {spec!r}: {e}") from None


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown activation calibration {method!r}; known: {', '.join(METHODS)}")


def clip_values(quantizer: Quantizer, method: str, absmax: np.ndarray, rows: np.ndarray,
                percentile: float = 99.99) -> np.ndarray:
    """The clipping value (amax) of each stacked layer: ``absmax`` (...,) is the calibration
    inputs' largest magnitude and ``rows`` (..., n, in) a sample of them. ``percentile``: that
    percentile of ``|rows|``; ``mse``: the ``MSE_RATIOS`` multiple of absmax whose quantization of
    ``rows`` has the least squared error."""
    check_method(method)
    absmax = np.asarray(absmax, np.float32)
    if method in ("absmax", "dynamic"):
        return absmax
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100]; got {percentile}")
        flat = np.abs(rows).reshape(rows.shape[:-2] + (-1,))
        return np.maximum(np.percentile(flat, percentile, axis=-1), np.finfo(np.float32).tiny).astype(np.float32)
    errors = np.stack([_mse(quantizer, rows, absmax * r) for r in MSE_RATIOS], axis=-1)
    best = np.asarray(MSE_RATIOS, np.float32)[np.argmin(errors, axis=-1)]
    return (absmax * best).astype(np.float32)


def _mse(quantizer: Quantizer, rows, clip) -> np.ndarray:
    """Mean squared quantization error of ``rows`` (..., n, in) at clip (...,), per leading index."""
    rows, clip = jnp.asarray(rows, jnp.float32), jnp.asarray(clip, jnp.float32)
    lead = rows.shape[:-2]
    flat_rows, flat_clip = rows.reshape((-1,) + rows.shape[-2:]), clip.reshape(-1)
    err = jax.jit(jax.vmap(lambda x, c: jnp.mean((quantizer(x, amax_history=c[None]) - x) ** 2)))(flat_rows, flat_clip)
    return np.asarray(err).reshape(lead)
