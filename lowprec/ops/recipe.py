"""A Recipe: which Quantizer each operand of the three GEMMs of a linear layer uses."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from lowprec.quant import Quantizer
from lowprec.quant.execution import FP8_TRANSPOSES, NATIVE_FP8, Execution
from lowprec.quant.hadamard import Hadamard

# The six GEMM operands, in a fixed order (telemetry rows and stochastic-rounding key folds use it).
# forward:     y  = act  x weight
# grad-input:  dx = grad x weight^T
# grad-weight: dw = act^T x grad   (computed as grad x act, then transposed)
ROLES = ("fwd_act", "fwd_weight", "dgrad_grad", "dgrad_weight", "wgrad_grad", "wgrad_act")
REUSED_ROLES = {"dgrad_weight": "fwd_weight", "wgrad_act": "fwd_act"}
COMPENSATIONS = ("separate", "fused")
REQUANTIZE_FROM = ("input", "forward")
# A Hadamard transform per GEMM, applied to both of its operands along the axes they contract.
HADAMARDS = {"fwd_hadamard": ("fwd_act", "fwd_weight"), "dgrad_hadamard": ("dgrad_grad", "dgrad_weight"),
             "wgrad_hadamard": ("wgrad_grad", "wgrad_act")}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Per-GEMM-role quantizers and dtypes; a frozen, hashable value (static under jit).

    A role left as None is not quantized. ``reuse_forward=True`` makes the backward GEMMs use
    the forward-quantized weight and activation (as the FP4 paper does); ``dgrad_weight`` and
    ``wgrad_act`` must then be None. Otherwise they are requantized from high precision.

    ``compute_dtype``: dtype of GEMM operands that are not exact FP8 values (None: the inputs'
    dtype). ``accum_dtype``: the GEMMs' accumulation (``preferred_element_type``).
    ``out_dtype``: the result's dtype (None: the inputs' promoted dtype).

    OCC (``fwd_act.occ``): with ``compensation="separate"`` the residual times the unquantized
    weight is a second GEMM in ``occ.residual_dtype`` (the paper's formula); with ``"fused"``
    the residual is added to the quantized activation and one GEMM multiplies it with the
    quantized weight (what the paper's reference code computes; one GEMM instead of two).

    ``native_fp8``: ``"auto"`` runs GEMMs whose operands are exact FP8 values with factorable
    scales on FP8 tensor cores when the device has them; ``"off"`` always simulates; ``"on"``
    emits the FP8 pattern on any backend (XLA upcasts where there are no FP8 units).
    Delayed scaling: a role whose Quantizer has ``source="delayed"`` (per tensor only) takes its
    scale from the largest amax of a history of the last ``amax_history_len`` steps instead of
    the operand's current amax (Transformer Engine's default): the quantization no longer waits
    for a reduction over its input. ``dot_general`` then needs ``amax_history`` and returns the
    updated history as its gradient (see ``ops.dot``).
    ``fp8_transposes``: how an FP8 operand is brought into cuBLASLt's layout when it needs a
    transpose (the weight forward, both operands of the weight gradient): ``"auto"`` (the
    default: ``"pallas"`` when the process has exactly one device and it is a GPU, else
    ``"fused"``; which one ran is logged, see ``ops.cast_transpose.auto_transposes``), ``"fused"`` (XLA
    fuses the transpose into the quantization), ``"separate"`` (the quantization first, then
    a plain 1-byte transpose) or ``"pallas"`` (an operand that two GEMMs use in different
    layouts gets both from one cast-transpose kernel, ``ops.cast_transpose``: per-tensor
    power-of-two scales, tiles of 64; others fall back to ``"fused"``, logged); same bits
    (``"pallas"``: up to XLA's excess precision, see ``ops.cast_transpose``), speed depends on
    the device (benchmark_gemm). The kernel is not partitioned: under ``jit`` with operands
    sharded across devices XLA would gather them onto each device (the training loop refuses
    ``"pallas"`` on a mesh of more than one device; ``"auto"`` picks ``"fused"`` there).
    ``fwd_hadamard``, ``dgrad_hadamard``, ``wgrad_hadamard``: a ``quant.Hadamard`` applied to both
    operands of that GEMM along the last axis pair it contracts, before they are quantized (the
    product is unchanged up to rounding); needs ``reuse_forward=False`` (a transformed operand is
    of no use to another GEMM) and, forward, no OCC (its residual and clamp are elementwise in the
    untransformed operand). With ``fwd_hadamard`` the backward GEMMs take the forward's
    transformed operands, an input-dependent estimator (such as QuEST's trust mask) multiplies
    their results where the forward quantizer saw its input, in the transformed domain, and the
    inverse transform maps them back (the chain rule through ``y = Q(x H) Q(w H)^T``).
    ``native_fp8`` and ``fp8_transposes`` choose how, not which numbers: a run sets them (and
    its quantizers' ``kernel`` and ``block_amax``) through a ``quant.Execution``
    (``with_execution``, ``dot_general(..., execution=...)``); the fields stay so that existing
    recipe strings, JSON and run directories keep working.
    ``requantize_from``: what the backward's own ``dgrad_weight`` and ``wgrad_act`` quantizers
    quantize: ``"input"`` (the high-precision operands, transformed by ``fwd_hadamard`` if set)
    or ``"forward"`` (the forward's quantized operands, dequantized: Quartet's backward
    requantizes the fake-quantized ``xq``, ``wq``); ``"forward"`` needs ``reuse_forward=False``.
    """

    fwd_act: Quantizer | None = None
    fwd_weight: Quantizer | None = None
    dgrad_grad: Quantizer | None = None
    dgrad_weight: Quantizer | None = None
    wgrad_grad: Quantizer | None = None
    wgrad_act: Quantizer | None = None
    reuse_forward: bool = False
    compute_dtype: str | None = None
    accum_dtype: str = "float32"
    out_dtype: str | None = None
    compensation: str = "separate"
    native_fp8: str = "auto"
    fp8_transposes: str = "auto"
    amax_history_len: int = 16
    fwd_hadamard: Hadamard | None = None
    dgrad_hadamard: Hadamard | None = None
    wgrad_hadamard: Hadamard | None = None
    requantize_from: str = "input"
    name: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        for role in ROLES:
            q = getattr(self, role)
            if q is not None and not isinstance(q, Quantizer):
                raise TypeError(f"Recipe.{role} must be a Quantizer or None; got {type(q).__name__}")
            if q is not None and q.source == "delayed" and (q.granularity.kind != "tensor" or q.tensor_scale):
                raise ValueError(f"Recipe.{role}: source='delayed' needs granularity='tensor' in GEMMs (one "
                                 f"amax per operand and step is recorded); got granularity={q.granularity}")
            if q is not None and role != "fwd_act" and q.occ is not None:
                raise ValueError(f"Recipe.{role}: OCC applies to the forward activation only (fwd_act)")
        if self.reuse_forward:
            for role, source in REUSED_ROLES.items():
                if getattr(self, role) is not None:
                    raise ValueError(f"Recipe.{role} must be None with reuse_forward=True "
                                     f"(the backward reuses {source})")
        for field in ("compute_dtype", "accum_dtype", "out_dtype"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, _dtype_name(field, value))
        _choice("compensation", self.compensation, COMPENSATIONS)
        _choice("native_fp8", self.native_fp8, NATIVE_FP8)
        _choice("fp8_transposes", self.fp8_transposes, FP8_TRANSPOSES)
        _choice("requantize_from", self.requantize_from, REQUANTIZE_FROM)
        if self.requantize_from == "forward" and self.reuse_forward:
            raise ValueError("Recipe.requantize_from='forward' needs reuse_forward=False (with reuse_forward the "
                             "backward uses the forward operands as they are)")
        self._check_hadamards()
        if not (isinstance(self.amax_history_len, int) and self.amax_history_len >= 1):
            raise ValueError(f"Recipe.amax_history_len must be an integer >= 1; got {self.amax_history_len!r}")

    def _check_hadamards(self):
        for field, roles in HADAMARDS.items():
            h = getattr(self, field)
            if h is None:
                continue
            if not isinstance(h, Hadamard):
                raise TypeError(f"Recipe.{field} must be a lowprec.quant.Hadamard or None; got {type(h).__name__}")
            if self.reuse_forward:
                raise ValueError(f"Recipe.{field} needs reuse_forward=False (each GEMM transforms its own operands)")
            for role in roles if field == "fwd_hadamard" else ():
                q = getattr(self, role)
                if q is not None and q.occ is not None:
                    raise ValueError(f"Recipe.{role}: OCC cannot follow fwd_hadamard (its clamp and residual are "
                                     "elementwise in the untransformed operand)")

    def quantizer(self, role: str) -> Quantizer | None:
        """The quantizer a role uses (with ``reuse_forward``, the forward one it reuses)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
        if self.reuse_forward and role in REUSED_ROLES:
            return getattr(self, REUSED_ROLES[role])
        return getattr(self, role)

    def needs_key(self) -> tuple[str, ...]:
        """The roles that round stochastically and the Hadamard fields with signs from the key
        (their GEMMs need a key)."""
        rounding = tuple(r for r in ROLES if getattr(self, r) is not None and getattr(self, r).rounding == "stochastic")
        return rounding + tuple(f for f in HADAMARDS if getattr(self, f) is not None and getattr(self, f).needs_key)

    def delayed_roles(self) -> tuple[str, ...]:
        """The roles scaled from an amax history (``source="delayed"``)."""
        return tuple(r for r in ROLES if getattr(self, r) is not None and getattr(self, r).source == "delayed")

    def with_execution(self, execution: Execution | str | dict | None) -> Recipe:
        """This recipe computed the way ``execution`` says (``Execution.parse``; None: as it is):
        its ``native_fp8``, ``fp8_transposes`` and its quantizers' ``kernel`` and ``block_amax``
        replaced; the numbers it describes are unchanged."""
        if execution is None:
            return self
        e = Execution.parse(execution)
        changes = {f: getattr(e, f) for f in ("native_fp8", "fp8_transposes") if getattr(self, f) != getattr(e, f)}
        for role in ROLES:
            q = getattr(self, role)
            if e.apply_quantizer(q) is not q:
                changes[role] = e.apply_quantizer(q)
        return dataclasses.replace(self, **changes) if changes else self

    def execution(self) -> Execution:
        """The Execution this recipe's own fields say (its quantizers' ``kernel`` and
        ``block_amax`` from the first quantized role; defaults where none is)."""
        first = next((getattr(self, r) for r in ROLES if getattr(self, r) is not None), None)
        return Execution(self.native_fp8, self.fp8_transposes, *(
            () if first is None else (first.kernel, first.block_amax)))

    def replace(self, **changes) -> Recipe:
        """A copy with ``changes`` (validated like a new Recipe)."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        def q(role):
            if self.reuse_forward and role in REUSED_ROLES:
                return "forward"
            return "-" if getattr(self, role) is None else str(getattr(self, role))

        parts = [f"fwd(act={q('fwd_act')}, weight={q('fwd_weight')})",
                 f"dgrad(grad={q('dgrad_grad')}, weight={q('dgrad_weight')})",
                 f"wgrad(grad={q('wgrad_grad')}, act={q('wgrad_act')})",
                 f"compute={self.compute_dtype or 'input'}", f"accum={self.accum_dtype}"]
        if self.out_dtype:
            parts.append(f"out={self.out_dtype}")
        if self.fwd_act is not None and self.fwd_act.occ is not None:
            parts.append(f"compensation={self.compensation}")
        if self.native_fp8 != "auto":
            parts.append(f"native_fp8={self.native_fp8}")
        if self.fp8_transposes != "auto":
            parts.append(f"fp8_transposes={self.fp8_transposes}")
        parts += [f"{f.split('_')[0]}_hadamard={getattr(self, f)}" for f in HADAMARDS if getattr(self, f) is not None]
        if self.requantize_from != "input":
            parts.append(f"requantize_from={self.requantize_from}")
        if self.delayed_roles():
            parts.append(f"amax_history_len={self.amax_history_len}")
        return f"Recipe {self.name or 'custom'}: " + " ".join(parts)


def _dtype_name(field: str, value) -> str:
    try:
        return jnp.dtype(value).name
    except TypeError:
        raise ValueError(f"Recipe.{field}: {value!r} is not a dtype (e.g. 'bfloat16', 'float32')") from None


def _choice(field, value, allowed):
    if value not in allowed:
        raise ValueError(f"unknown Recipe.{field} {value!r}; known: {', '.join(allowed)}")
