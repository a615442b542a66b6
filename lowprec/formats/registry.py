"""Names and config strings for formats: ``get("e4m3fn")``, ``get("fp(e=3,m=2)")``, ``register``."""

from __future__ import annotations

import re

from lowprec.formats.base import Format
from lowprec.formats.codebook import NF4_VALUES, PRIMER_LUT4_VALUES, Codebook
from lowprec.formats.floats import FloatFormat
from lowprec.formats.ints import IntFormat

_REGISTRY: dict[str, Format] = {}


def register(name: str, fmt: Format, *, overwrite: bool = False) -> Format:
    """Makes ``fmt`` available as ``get(name)`` (and in configs). Returns it."""
    if not isinstance(fmt, Format):
        raise TypeError(f"register({name!r}, ...) needs a Format; got {type(fmt).__name__}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"format names are identifiers (letters, digits, _); got {name!r}")
    if name in _REGISTRY and not overwrite and _REGISTRY[name] != fmt:
        raise ValueError(f"format {name!r} is already registered as {_REGISTRY[name]!r}; pass overwrite=True")
    _REGISTRY[name] = fmt
    return fmt


def names() -> list[str]:
    """Every registered name, sorted."""
    return sorted(_REGISTRY)


def get(spec: str | Format) -> Format:
    """A format from a registered name, a constructor string, or a Format (returned as is).

    Constructor strings: ``fp(e=3,m=2[,bias=..,specials=..,subnormals=..,signed=..,zero=..])``,
    ``int(bits=5[,signed=..,narrow_range=..,frac_bits=..])``, ``codebook(v0,v1,...)``.
    """
    if isinstance(spec, Format):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a format is a name, a constructor string or a Format; got {type(spec).__name__}")
    key = spec.strip()
    if key in _REGISTRY:
        return _REGISTRY[key]
    m = re.fullmatch(r"(fp|int|codebook)\((.*)\)", key.replace(" ", ""))
    if m is None:
        raise ValueError(f"unknown format {spec!r}; known: {', '.join(names())}; "
                         "or a constructor: fp(e=..,m=..), int(bits=..), codebook(v0,v1,..)")
    kind, body = m.groups()
    if kind == "codebook":
        return Codebook([float(v) for v in body.split(",") if v])
    kwargs = dict(_parse_kv(item, spec) for item in body.split(",") if item)
    if kind == "fp":
        if "e" not in kwargs or "m" not in kwargs:
            raise ValueError(f"{spec!r}: fp(...) needs e= and m= (exponent and mantissa bits)")
        kwargs["exp_bits"], kwargs["man_bits"] = kwargs.pop("e"), kwargs.pop("m")
        return _construct(FloatFormat, kwargs, spec)
    return _construct(IntFormat, kwargs, spec)


def _construct(cls, kwargs, spec):
    allowed = [f for f in cls.__dataclass_fields__ if f != "label"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{spec!r}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return cls(**kwargs)


def _parse_kv(item: str, spec: str):
    if "=" not in item:
        raise ValueError(f"{spec!r}: expected key=value, got {item!r}")
    k, v = item.split("=", 1)
    if v in ("True", "true", "False", "false"):
        return k, v.lower() == "true"
    if re.fullmatch(r"-?\d+", v):
        return k, int(v)
    return k, v


def _builtin() -> None:
    F = FloatFormat
    for name, fmt in {
        "fp32": F(8, 23, specials="ieee"), "bf16": F(8, 7, specials="ieee"), "fp16": F(5, 10, specials="ieee"),
        "e5m2": F(5, 2, specials="ieee"), "e4m3": F(4, 3, specials="ieee"), "e3m4": F(3, 4, specials="ieee"),
        "e4m3fn": F(4, 3, specials="fn"), "e4m3fnuz": F(4, 3, specials="fnuz"),
        "e5m2fnuz": F(5, 2, specials="fnuz"), "e4m3b11fnuz": F(4, 3, bias=11, specials="fnuz"),
        "e3m2fn": F(3, 2), "e2m3fn": F(2, 3), "e2m1fn": F(2, 1), "e1m2": F(1, 2), "e3m0": F(3, 0),
        "e8m0fnu": F(8, 0, specials="fn", signed=False, zero=False, subnormals=False),
        "int8": IntFormat(8), "int4": IntFormat(4), "int2": IntFormat(2),
        "int8_full": IntFormat(8, narrow_range=False), "int4_full": IntFormat(4, narrow_range=False),
        "uint8": IntFormat(8, signed=False), "uint4": IntFormat(4, signed=False),
        "mxint8": IntFormat(8, frac_bits=6),
        "nf4": Codebook(NF4_VALUES), "lut4_primer": Codebook(PRIMER_LUT4_VALUES),
    }.items():
        object.__setattr__(fmt, "label", name)
        register(name, fmt)
    for alias, name in {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16",
                        "e2m1": "e2m1fn", "e3m2": "e3m2fn", "e2m3": "e2m3fn", "e8m0": "e8m0fnu"}.items():
        register(alias, _REGISTRY[name])


_builtin()
