"""Native FP8 GEMMs: which formats fit an FP8 dtype, which devices have FP8 tensor cores,
the path each GEMM takes (logged once per shape), and what the compiled HLO really runs.

XLA rewrites a dot_general on float8 operands with an f32 ``preferred_element_type`` into
cuBLASLt's FP8 GEMM (custom-call target ``__cublas$lt$matmul$f8``) on GPUs with FP8 tensor
cores. Scales stay in f32 and are applied to the output: scales cast to bf16 before the GEMM
make XLA keep it in bf16 without a word, so ``gemm_targets`` / ``fp8_path`` read the HLO.
"""

from __future__ import annotations

import collections
import functools
import logging
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from lowprec.formats import Format

logger = logging.getLogger(__name__)

FP8_DTYPES = {"float8_e4m3fn": jnp.float8_e4m3fn, "float8_e5m2": jnp.float8_e5m2}
_ML_DTYPES = {"float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2}
FP8_TARGET = "__cublas$lt$matmul$f8"
_MIN_CAPABILITY = (8, 9)  # Ada, Hopper, Blackwell
_logged: set = set()


@functools.lru_cache(maxsize=None)
def fp8_dtype_for(fmt: Format) -> str | None:
    """The FP8 dtype (E4M3 preferred) that holds every value of ``fmt`` exactly, if any.

    E4M3 and E5M2 hold themselves; E4M3 also holds E2M1, E2M3, E3M2 and INT4 values, so
    FP4/FP6 GEMMs with factorable scales run on FP8 tensor cores with identical products.
    """
    if fmt.bits > 8:
        return None
    values = _values(fmt)
    for name, dtype in _ML_DTYPES.items():
        with np.errstate(over="ignore", invalid="ignore"):
            cast = values.astype(dtype).astype(np.float64)
        if np.array_equal(cast, values):
            return name
    return None


@functools.lru_cache(maxsize=None)
def cast_dtype_for(fmt: Format) -> str | None:
    """The FP8 dtype whose finite values are exactly those of ``fmt``, if any: rounding onto
    ``fmt`` to nearest-even, saturating, is then one clip and one hardware convert."""
    name = fp8_dtype_for(fmt)
    if name is None or not getattr(fmt, "has_nan", False):
        return None
    codes = np.arange(256, dtype=np.uint8).view(_ML_DTYPES[name]).astype(np.float64)
    return name if np.array_equal(np.unique(codes[np.isfinite(codes)]) + 0.0, _values(fmt)) else None


def widen(values, dtype):
    """``values`` in ``dtype``. FP8 values are decoded from their bits by integer arithmetic:
    XLA:GPU drops a chain of float converts (f32 -> f8 -> f32 becomes nothing, "excess
    precision"), which would silently undo a quantizing cast; a bit pattern cannot be dropped."""
    name = jnp.dtype(values.dtype).name
    if name not in FP8_DTYPES:
        return values.astype(dtype)
    exp_bits, man_bits, bias, ieee = _FP8_LAYOUT[name]
    u = jax.lax.bitcast_convert_type(values, jnp.uint8).astype(jnp.int32)
    e, frac = (u >> man_bits) & ((1 << exp_bits) - 1), u & ((1 << man_bits) - 1)
    unit = frac.astype(jnp.float32) * (0.5 ** man_bits)  # exact
    normal = e > 0
    mag = jnp.where(normal, 1.0 + unit, unit) * _pow2(jnp.where(normal, e, 1) - bias)
    top = e == (1 << exp_bits) - 1
    if ieee:  # all-ones exponent: inf (zero fraction) or NaN
        mag = jnp.where(top, jnp.where(frac == 0, jnp.inf, jnp.nan), mag)
    else:  # "fn": only all-ones exponent and fraction is NaN; no inf
        mag = jnp.where(top & (frac == (1 << man_bits) - 1), jnp.nan, mag)
    return jnp.where((u >> 7) == 1, -mag, mag).astype(dtype)


_FP8_LAYOUT = {"float8_e4m3fn": (4, 3, 7, False), "float8_e5m2": (5, 2, 15, True)}


def _pow2(k):
    """2.0 ** k for int32 ``k`` in the normal range, exactly (from the exponent bits)."""
    return jax.lax.bitcast_convert_type(((k + 127) << 23).astype(jnp.int32), jnp.float32)


def exact_in(fmt: Format, dtype) -> bool:
    """Whether every value of ``fmt`` is exactly representable in ``dtype``."""
    return _exact_in(fmt, jnp.dtype(dtype).name)


@functools.lru_cache(maxsize=None)
def _exact_in(fmt: Format, dtype_name: str) -> bool:
    if fmt.bits > 16:
        return dtype_name in ("float32", "float64") and fmt.max <= float(jnp.finfo(jnp.float32).max)
    values = _values(fmt)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(jnp.dtype(dtype_name)).astype(np.float64)
    return bool(np.array_equal(cast, values))


def _values(fmt: Format) -> np.ndarray:
    """The finite values of every code of ``fmt`` (a superset of ``fmt.values()`` where some
    codes are unused), decoded in one compiled call: op-by-op decoding compiles every op."""
    codes = np.arange(2 ** fmt.bits, dtype=np.uint32)
    with jax.ensure_compile_time_eval():  # may be first asked while tracing
        v = np.asarray(jax.jit(fmt.decode)(codes), np.float64)
    return np.unique(v[np.isfinite(v)]) + 0.0


def device_has_fp8(device=None) -> bool:
    """Whether ``device`` (default: the first device) has FP8 tensor cores (CUDA >= 8.9)."""
    device = jax.devices()[0] if device is None else device
    if device.platform != "gpu":
        return False
    try:
        major, minor = (int(p) for p in str(getattr(device, "compute_capability", "")).split(".")[:2])
    except ValueError:  # no CUDA compute capability (e.g. a ROCm architecture name)
        return False
    return (major, minor) >= _MIN_CAPABILITY


def choose(lhs_dtype, rhs_dtype, mode: str, device=None) -> tuple[str, str]:
    """(path, reason) for a GEMM whose operands arrive as ``lhs_dtype`` x ``rhs_dtype``.

    ``path`` is "native_fp8" or "simulated". FP8 operands need at least one E4M3 (FP8
    tensor cores have no E5M2 x E5M2 GEMM).
    """
    names = (jnp.dtype(lhs_dtype).name, jnp.dtype(rhs_dtype).name)
    fp8 = sum(n in FP8_DTYPES for n in names)
    if fp8 < 2:
        return "simulated", ("no FP8 operand" if fp8 == 0 else
                             "one operand is not an FP8 value with its scale outside the contraction")
    if names == ("float8_e5m2", "float8_e5m2"):
        return "simulated", "E5M2 x E5M2 has no FP8 GEMM"
    if mode == "off":
        return "simulated", "native_fp8='off'"
    if mode == "on":
        return "native_fp8", "native_fp8='on'"
    device = jax.devices()[0] if device is None else device
    if device_has_fp8(device):
        return "native_fp8", f"{getattr(device, 'device_kind', device.platform)} has FP8 tensor cores"
    return "simulated", f"{getattr(device, 'device_kind', device.platform)} has no FP8 tensor cores"


def log_path(role: str, lhs, rhs, path: str, reason: str) -> None:
    """Logs the path of a GEMM once per (role, shapes, dtypes, path)."""
    key = (role, lhs.shape, str(lhs.dtype), rhs.shape, str(rhs.dtype), path)
    if key in _logged:
        return
    _logged.add(key)
    logger.info("%s GEMM %s%s x %s%s: %s (%s)", role, lhs.dtype, list(lhs.shape), rhs.dtype,
                list(rhs.shape), path, reason)


_GEMM_TARGET = re.compile(r'custom_call_target="([^"]*(?:gemm|matmul)[^"]*)"')
_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(\w+)\[")
_CALL = re.compile(r"\b(?:custom-call|dot|fusion)\(([^)]*)\)")
_OPERAND = re.compile(r"(?:\b(\w+)\[[^\]]*\](?:\{[^}]*\})?\s+)?%([\w.\-]+)")


def parse_gemms(hlo_text: str) -> list[tuple[str, tuple[str, ...]]]:
    """(kind, operand dtypes) of every GEMM in an HLO module's text.

    ``kind`` is a GEMM custom-call target (e.g. ``__cublas$lt$matmul$f8``), ``triton_gemm``
    for a Triton GEMM fusion, or ``dot`` for an HLO dot (CPU, or before GPU rewrites).
    Operand dtypes come from the operand text or from the operands' definitions.
    """
    lines = hlo_text.splitlines()
    defined = dict(m.groups() for m in map(_DEFINITION.match, lines) if m)
    gemms = []
    for line in lines:
        target = _GEMM_TARGET.search(line)
        if target:
            kind = target.group(1)
        elif "__triton_gemm" in line and " fusion(" in line:
            kind = "triton_gemm"
        elif re.search(r"=\s*\S+\s+dot\(", line):
            kind = "dot"
        else:
            continue
        call = _CALL.search(line)
        operands = _OPERAND.findall(call.group(1)) if call else []
        gemms.append((kind, tuple(dtype or defined.get(name, "?") for dtype, name in operands)))
    return gemms


def gemm_targets(fn, *args, **kwargs) -> collections.Counter:
    """How many GEMMs of each kind the compiled ``fn(*args)`` runs (see ``parse_gemms``)."""
    text = jax.jit(fn).lower(*args, **kwargs).compile().as_text()
    return collections.Counter(kind for kind, _ in parse_gemms(text))


def fp8_path(fn, *args, **kwargs) -> str:
    """"native" if the compiled ``fn(*args)`` runs a cuBLASLt FP8 GEMM, else "simulated".

    Only the FP8 custom call counts: a Triton GEMM fed float8 operands may upcast them, so it
    shows in ``gemm_targets`` as ``triton_gemm`` without being claimed as native.
    """
    text = jax.jit(fn).lower(*args, **kwargs).compile().as_text()
    return "native" if any(kind == FP8_TARGET for kind, _ in parse_gemms(text)) else "simulated"
