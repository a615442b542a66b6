"""Names and config strings for formats: ``get("e4m3fn")``, ``get("fp(e=3,m=2)")``, ``register``."""

from __future__ import annotations

import re

from lowprec.formats.base import Format
from lowprec.formats.codebook import NF4_VALUES, PRIMER_LUT4_VALUES, Codebook
from lowprec.formats.floats import FloatFormat
from lowprec.formats.ints import IntFormat
from lowprec.registry import Registry

def _check(name: str, fmt: Format) -> Format:
    if not isinstance(fmt, Format):
        raise TypeError(f"register({name!r}, ...) needs a Format; got {type(fmt).__name__}")
    return fmt


def _fp(e: int | None = None, m: int | None = None, bias: int | None = None, specials: str = "none",
        subnormals: bool = True, signed: bool = True, zero: bool = True) -> FloatFormat:
    """``fp(e=3, m=2, ...)``: a FloatFormat with ``e`` exponent and ``m`` mantissa bits."""
    if e is None or m is None:
        raise ValueError("fp(...) needs e= and m= (exponent and mantissa bits)")
    return FloatFormat(e, m, bias=bias, specials=specials, subnormals=subnormals, signed=signed, zero=zero)


def _int(bits: int, signed: bool = True, narrow_range: bool = True, frac_bits: int = 0) -> IntFormat:
    """``int(bits=5, ...)``: an IntFormat."""
    return IntFormat(bits, signed=signed, narrow_range=narrow_range, frac_bits=frac_bits)


def _codebook(values: tuple[float, ...]) -> Codebook:
    """``codebook(values=(v0, v1, ...))``, also written ``codebook(v0,v1,...)``."""
    return Codebook([float(v) for v in values])


FORMATS = Registry("format", check=_check, words=True)
FORMATS.constructors.update(fp=_fp, int=_int, codebook=_codebook)


def register(name: str, fmt: Format, *, overwrite: bool = False) -> Format:
    """Makes ``fmt`` available as ``get(name)`` (and in configs). Returns it."""
    return FORMATS.register(name, fmt, overwrite)


def names() -> list[str]:
    """Every registered name, sorted."""
    return FORMATS.names()


def get(spec: str | Format) -> Format:
    """A format from a registered name, a constructor string, or a Format (returned as is).

    Constructor strings: ``fp(e=3,m=2[,bias=..,specials=..,subnormals=..,signed=..,zero=..])``,
    ``int(bits=5[,signed=..,narrow_range=..,frac_bits=..])``, ``codebook(v0,v1,...)``.
    """
    if isinstance(spec, Format):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a format is a name, a constructor string or a Format; got {type(spec).__name__}")
    values = re.fullmatch(r"\s*codebook\(([^=]*)\)\s*", spec)
    if values is not None:
        return Codebook([float(v) for v in values.group(1).split(",") if v.strip()])
    return FORMATS.get(spec)


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
        register(alias, FORMATS.get(name))


_builtin()
