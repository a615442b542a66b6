"""An Execution: how the GEMMs and quantizers of a run compute their numbers, never which ones.

A ``Recipe`` and its ``Quantizer`` s describe numbers (formats, scales, rounding, estimators);
an Execution holds the implementation choices that the documentation says give the same bits
(up to where it says otherwise), chosen once per run and logged:

- ``native_fp8``: ``"auto"``, ``"off"`` or ``"on"``, whether exact-FP8 GEMMs run on FP8 tensor
  cores (see ``ops.Recipe``);
- ``fp8_transposes``: ``"auto"``, ``"fused"``, ``"separate"`` or ``"pallas"``, how an FP8 operand
  is brought into the layout its GEMM needs (``ops.cast_transpose``);
- ``kernel``: ``"auto"``, ``"xla"`` or ``"pallas"``, how a quantizer fake-quantizes small blocks
  (``quant.block_kernel``);
- ``block_amax``: ``"reduce"`` or ``"slices"``, how a small block's amax is traced
  (``quant.scaling.amax``).

``Execution.parse("native_fp8=off,fp8_transposes=separate")`` reads the run-config form.
"""

from __future__ import annotations

import dataclasses

from lowprec.quant.scaling import BLOCK_AMAX

NATIVE_FP8 = ("auto", "off", "on")
FP8_TRANSPOSES = ("auto", "fused", "separate", "pallas")
KERNELS = ("auto", "xla", "pallas")
CHOICES = {"native_fp8": NATIVE_FP8, "fp8_transposes": FP8_TRANSPOSES, "kernel": KERNELS, "block_amax": BLOCK_AMAX}
# The Quantizer fields an Execution sets (the others, native_fp8 and fp8_transposes, are Recipe's).
QUANTIZER_FIELDS = ("kernel", "block_amax")


@dataclasses.dataclass(frozen=True)
class Execution:
    """Same-bits implementation choices for a run; a frozen, hashable value (static under jit)."""

    native_fp8: str = "auto"
    fp8_transposes: str = "auto"
    kernel: str = "auto"
    block_amax: str = "reduce"

    def __post_init__(self):
        for field, allowed in CHOICES.items():
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"unknown Execution.{field} {value!r}; known: {', '.join(allowed)}")

    @classmethod
    def parse(cls, spec) -> Execution:
        """An Execution from None (the defaults), an Execution, a dict, or a string
        ``"field=value,field=value"`` (empty: the defaults)."""
        if spec is None or isinstance(spec, Execution):
            return spec or cls()
        if isinstance(spec, str):
            spec = dict(_pair(p) for p in spec.split(",") if p.strip())
        if not isinstance(spec, dict):
            raise TypeError(f"execution must be a string 'field=value,...', a dict or an Execution; "
                            f"got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(CHOICES))
        if unknown:
            raise ValueError(f"unknown Execution field {unknown[0]!r}; known: {', '.join(CHOICES)}")
        return cls(**spec)

    def replace(self, **changes) -> Execution:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One log line: every field and its value."""
        return ", ".join(f"{f}={getattr(self, f)}" for f in CHOICES)

    def __str__(self) -> str:
        """The run-config form (``parse`` reads it back): the fields that differ from the defaults."""
        default = Execution()
        return ",".join(f"{f}={getattr(self, f)}" for f in CHOICES if getattr(self, f) != getattr(default, f))

    def apply_quantizer(self, q):
        """``q`` (a Quantizer or None) with this execution's ``kernel`` and ``block_amax``, its
        ``double_quant`` too; the numbers it describes are unchanged."""
        if q is None:
            return None
        changes = {f: getattr(self, f) for f in QUANTIZER_FIELDS if getattr(q, f) != getattr(self, f)}
        if q.double_quant is not None:
            dq = self.apply_quantizer(q.double_quant)
            if dq is not q.double_quant:
                changes["double_quant"] = dq
        return q.replace(**changes) if changes else q


def _pair(part: str) -> tuple[str, str]:
    field, sep, value = part.partition("=")
    if not sep:
        raise ValueError(f"execution entry {part.strip()!r} is not field=value; fields: {', '.join(CHOICES)}")
    return field.strip(), value.strip().strip("'\"")
