"""The Quantizer: element format + granularity + scale rule + rounding + gradient estimator."""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp

from lowprec.formats import OVERFLOW_POLICIES, ROUNDING_MODES, Format, get
from lowprec.quant import block_kernel, scaling
from lowprec.quant import occ as occ_lib
from lowprec.quant.execution import KERNELS
from lowprec.quant.estimators import Estimator, get_estimator
from lowprec.quant.granularity import Granularity
from lowprec.quant.qtensor import QTensor

SOURCES = ("absmax", "delayed", "fixed")
logger = logging.getLogger(__name__)
_logged: set = set()


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """A scaled quantizer; a frozen, hashable value (a static argument under jit).

    ``q(x)`` returns the fake-quantized tensor (dequantized values, same shape and dtype);
    its gradient follows ``estimator``. ``q.quantize(x)`` returns codes and scales
    (a :class:`QTensor`) and ``.dequantize()`` inverts it.

    Fields (strings are parsed): ``format`` (a Format or name); ``granularity`` (``"tensor"``,
    ``"channel"``, ``"token"``, ``"block(32)"``, ``"tile(16,16)"``, ...); ``scale``: the scale
    rule ``"fp32"``, ``"pow2_floor"`` (OCP MX / E8M0), ``"pow2_ceil"``, ``"pow2_nearest"``,
    ``"floor_x4/3"`` (``pow2_floor`` times 4/3, kept as a constant tensor scale: Tseng et al.'s
    MXFP4 before stochastic rounding, never clipping) or a
    format for the scales (``"e4m3fn"``: with ``tensor_scale=True`` NVFP4's two levels);
    ``source``: ``"absmax"`` (current), ``"delayed"`` (from an amax history passed to the call)
    or ``"fixed"`` (``fixed_scale``); ``rounding``; ``estimator``; ``overflow``;
    ``random_bits`` for stochastic rounding; ``double_quant``: a Quantizer for the scales
    themselves (QLoRA's double quantization of NF4 absmax values, after removing their mean);
    ``occ``: an :class:`OCC` that clamps outliers of ``x`` before scaling (the residual and its
    compensation GEMM belong to the ops layer, through ``occ.clamp``). The gradient treats the
    clamp as the identity: every entry, outliers included, gets the estimator's derivative at
    its clamped scaled value, as in the FP4 paper, whose backward GEMMs use the quantized
    operands and so lose nothing at the clamp. ``block_amax``: ``"reduce"`` or ``"slices"``, how
    a small block's amax is traced (same bits; see ``scaling.amax``). ``kernel``: how ``q(x)``
    computes blocks of at most 16-value formats with ``pow2_floor`` scales (MXFP4, MXINT4, ...):
    ``"auto"`` from the one-pass Pallas kernel of ``quant.block_kernel`` when the process has
    exactly one device, a GPU, the kernel applies and the estimator is STE (else XLA; the path
    is logged once per quantizer and shape), ``"pallas"`` always from the kernel (interpreted
    off GPUs; an error where it does not apply), ``"xla"`` never. Same bits every way;
    ``quantize()`` (codes) is always XLA. ``block_amax`` and ``kernel`` choose how, not which
    numbers: a run sets them through a ``quant.Execution`` (``Execution.apply_quantizer``,
    ``ops.dot_general(..., execution=...)``); the fields stay for existing recipes.
    """

    format: Format | str
    granularity: Granularity | str = "tensor"
    scale: str | Format = "fp32"
    source: str = "absmax"
    fixed_scale: float = 1.0
    tensor_scale: bool = False
    rounding: str = "nearest_even"
    estimator: Estimator | str = "ste"
    overflow: str = "saturate"
    random_bits: int | None = None
    double_quant: Quantizer | None = None
    occ: occ_lib.OCC | None = None
    block_amax: str = "reduce"
    kernel: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "format", get(self.format))
        object.__setattr__(self, "granularity", Granularity.parse(self.granularity))
        object.__setattr__(self, "estimator", get_estimator(self.estimator))
        scaling.check_rule(self.scale)
        if not isinstance(self.scale, str):
            object.__setattr__(self, "scale", self.scale.name)
        _choice("source", self.source, SOURCES)
        _choice("rounding", self.rounding, ROUNDING_MODES)
        _choice("overflow", self.overflow, OVERFLOW_POLICIES)
        _choice("block_amax", self.block_amax, scaling.BLOCK_AMAX)
        _choice("kernel", self.kernel, KERNELS)
        if self.tensor_scale and self.scale in scaling.SCALE_RULES:
            raise ValueError("tensor_scale=True needs scale=<a format for the group scales>, e.g. 'e4m3fn'")
        if self.tensor_scale and not scaling.two_level_fits(self.format, get(self.scale)):
            raise ValueError(f"tensor_scale=True: format max times scale max ({self.format.max:g} * "
                             f"{get(self.scale).max:g}) exceeds fp32's range, so every scale would be 0; "
                             "use a scale format with a smaller max, e.g. 'e4m3fn'")
        if self.double_quant is not None and not isinstance(self.double_quant, Quantizer):
            raise TypeError("double_quant must be a Quantizer (for the scales) or None")
        if self.occ is not None and not isinstance(self.occ, occ_lib.OCC):
            raise TypeError(f"occ must be an OCC (lowprec.quant.OCC) or None; got {type(self.occ).__name__}")
        if not self.fixed_scale > 0:
            raise ValueError(f"fixed_scale must be positive; got {self.fixed_scale}")

    def __str__(self) -> str:
        parts = [self.format.name, str(self.granularity), f"scale={self.scale}"]
        for field, default in (("source", "absmax"), ("rounding", "nearest_even"), ("estimator", "ste"),
                               ("overflow", "saturate"), ("block_amax", "reduce"), ("kernel", "auto")):
            if str(getattr(self, field)) != default:
                parts.append(f"{field}={getattr(self, field)}")
        if self.tensor_scale:
            parts.append("tensor_scale")
        if self.double_quant is not None:
            parts.append(f"double_quant=({self.double_quant})")
        if self.occ is not None:
            parts.append(str(self.occ))
        return "Q(" + " ".join(parts) + ")"

    def replace(self, **changes) -> Quantizer:
        return dataclasses.replace(self, **changes)

    # ---- scales ----
    def amax(self, x) -> jax.Array:
        """The current amax of each scale group (what a delayed-scaling history records)."""
        xg, axes = self.granularity.to_groups(self._clamped(jnp.asarray(x)))
        return scaling.amax(xg, axes, self.block_amax)

    def _clamped(self, x):
        """``x`` with its outliers clamped when ``occ`` is set."""
        return x if self.occ is None else occ_lib.clamp(x, self.occ)[0]

    def _scales(self, xg, axes, amax_history, key, raw):
        """(scale for each group, tensor scale or None, double-quantized scale QTensor or None).
        ``raw``: the input before its fp32 upcast, for a per-tensor amax (``scaling.tensor_amax``)."""
        shape = [1 if d in axes else n for d, n in enumerate(xg.shape)]  # one scale per group
        if self.source == "fixed":
            return jnp.full(shape, self.fixed_scale, jnp.float32), None, None
        if self.tensor_scale:
            group, ts = scaling.two_level_scale(xg, axes, self.format, get(self.scale), self.block_amax)
        else:
            if self.source == "delayed":
                if amax_history is None:
                    raise ValueError("source='delayed' needs amax_history=... (see update_amax_history)")
                am = jnp.max(amax_history, axis=0).reshape(shape)
            elif self.scale in scaling.STAT_RULES:
                am = scaling.group_statistic(xg, axes, self.scale)
            elif self.granularity.kind == "tensor":
                am = scaling.tensor_amax(raw)
            else:
                am = scaling.amax(xg, axes, self.block_amax)
            base, factor = scaling.FACTORED_RULES.get(self.scale, (self.scale, None))
            group = scaling.scale_from_amax(am, self.format, base)
            ts = None if factor is None else jnp.asarray(factor, jnp.float32)  # a constant second level
        dq = None
        if self.double_quant is not None:
            mean = jnp.mean(group)
            dq = (self.double_quant.quantize(group.reshape(-1) - mean, key=key), mean)
            group = (dq[0].dequantize() + mean).reshape(group.shape)
        return group, ts, dq

    def _scaled(self, x, key, amax_history):
        x = self._clamped(x)
        xg, axes = self.granularity.to_groups(x.astype(jnp.float32) if x.dtype != jnp.float32 else x)
        k_elem, k_scale = (None, None) if key is None else jax.random.split(key)
        group, ts, dq = self._scales(jax.lax.stop_gradient(xg), axes, amax_history, k_scale,
                                     raw=jax.lax.stop_gradient(x))
        s = scaling.combine(group, ts)
        return xg, s, k_elem, (group, ts, dq)

    @staticmethod
    def _apply_inverse(xg, s):
        """The scaled input ``x * (1/s)`` (see ``scaling.apply_inverse``)."""
        return scaling.apply_inverse(xg, s)

    def _check_key(self, key):
        if self.rounding == "stochastic" and key is None:
            raise ValueError(f"{self}: stochastic rounding needs key=jax.random.key(...)")

    # ---- fake quantization (with the estimator's gradient) ----
    def __call__(self, x, key=None, amax_history=None) -> jax.Array:
        """Fake-quantizes ``x``: same shape and dtype; ``jax.grad`` follows the estimator."""
        x = jnp.asarray(x)
        self._check_key(key)
        return _fake_quant(self, x, key, amax_history)

    def kernel_path(self, x, backend: str | None = None, device_count: int | None = None) -> tuple[str, str]:
        """(``"pallas"`` or ``"xla"``, why): how ``self(x)`` computes its forward value on
        ``backend`` with ``device_count`` devices (default: this process's)."""
        why = block_kernel.supported(self, x)
        if self.kernel == "pallas":
            if why is not None:
                raise ValueError(f"{self}: kernel='pallas' cannot quantize {x.dtype}{list(x.shape)}: {why}; "
                                 "use kernel='auto' or 'xla'")
            return "pallas", "kernel='pallas'"
        if self.kernel == "xla":
            return "xla", "kernel='xla'"
        if why is None and self.estimator.needs_input:
            why = f"estimator {self.estimator} needs the scaled input"
        if why is None:
            why = block_kernel.not_one_gpu(backend, device_count)
        return ("xla", why) if why is not None else ("pallas", "one-pass kernel on a GPU")

    def _forward(self, x, key, amax_history):
        if self.granularity.kind == "block":  # the only kind the kernel handles: the others have one path
            path, why = self.kernel_path(x)
            _log_path(self, x, path, why)
            if path == "pallas":
                y = block_kernel.block_fake_quant(self, x).astype(x.dtype)
                if not self.estimator.needs_input:
                    return y, None
                xg, s, _, _ = self._scaled(x, key, amax_history)
                return y, self.granularity.from_groups(self._apply_inverse(xg, s), x.shape)
        xg, s, k_elem, _ = self._scaled(x, key, amax_history)
        xs = self._apply_inverse(xg, s)
        q = self.format.quantize(xs, self.rounding, k_elem, overflow=self.overflow, random_bits=self.random_bits)
        y = self.granularity.from_groups(scaling.apply_scale(q, s), x.shape).astype(x.dtype)
        return y, (self.granularity.from_groups(xs, x.shape) if self.estimator.needs_input else None)

    # ---- real quantization ----
    def quantize(self, x, key=None, amax_history=None) -> QTensor:
        """Codes and scales of ``x``; ``.dequantize()`` equals ``self(x)`` bit for bit."""
        x = jnp.asarray(x)
        self._check_key(key)
        xg, s, k_elem, (group, ts, dq) = self._scaled(x, key, amax_history)
        q = self.format.quantize(self._apply_inverse(xg, s), self.rounding, k_elem, overflow=self.overflow, random_bits=self.random_bits)
        codes = self.format._encode_f32(q).astype(self.format.code_dtype)
        return QTensor(codes=codes, scale=group if dq is None else None, tensor_scale=ts,
                       scale_q=None if dq is None else dq[0], scale_mean=None if dq is None else dq[1],
                       quantizer=self, shape=tuple(x.shape), dtype=jnp.dtype(x.dtype).name,
                       scale_shape=tuple(group.shape))


def _log_path(q: Quantizer, x, path: str, why: str) -> None:
    key = (q, tuple(x.shape), path, why)
    if key not in _logged:
        _logged.add(key)
        logger.info("%s on %s%s: %s (%s)", q, x.dtype, list(x.shape), "Pallas block kernel" if path == "pallas"
                    else "XLA", why)


def update_amax_history(history, amax) -> jax.Array:
    """Rolls a delayed-scaling history (length first) and records the newest amax at index 0."""
    return jnp.concatenate([amax.reshape((1,) + history.shape[1:]), history[:-1]], axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fake_quant(quantizer, x, key, amax_history):
    return quantizer._forward(x, key, amax_history)[0]


def _fake_quant_fwd(quantizer, x, key, amax_history):
    y, xs = quantizer._forward(x, key, amax_history)
    return y, xs


def _fake_quant_bwd(quantizer, xs, g):
    if xs is None:
        return g, None, None
    d = quantizer.estimator.derivative(xs, quantizer.format)
    return (g.astype(jnp.float32) * d).astype(g.dtype), None, None


_fake_quant.defvjp(_fake_quant_fwd, _fake_quant_bwd)


def _choice(field, value, allowed):
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; known: {', '.join(allowed)}")
