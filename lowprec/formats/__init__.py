"""Number formats (layer 1): exact rounding onto any float, integer or lookup-table grid.

    f = lp.formats.get("e4m3fn")               # or "fp(e=3,m=2)", "int(bits=5)", "nf4", ...
    f = lp.formats.FloatFormat(exp_bits=3, man_bits=2)
    q = f.quantize(x, rounding="stochastic", key=key)
"""

from lowprec.formats.rounding import ROUNDING_MODES
from lowprec.formats.base import OVERFLOW_POLICIES, Format
from lowprec.formats.codebook import NF4_VALUES, PRIMER_LUT4_VALUES, Codebook
from lowprec.formats.floats import FloatFormat
from lowprec.formats.ints import IntFormat
from lowprec.formats.packing import pack, unpack
from lowprec.formats.registry import get, names, register

__all__ = [
    "Codebook", "FloatFormat", "Format", "IntFormat", "NF4_VALUES", "OVERFLOW_POLICIES",
    "PRIMER_LUT4_VALUES", "ROUNDING_MODES", "get", "names", "pack", "register", "unpack",
]
