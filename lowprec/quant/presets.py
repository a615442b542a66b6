"""Named quantizers for the published block formats and the FP4 paper's settings.

MX (OCP Microscaling v1.0): blocks of 32 along the contraction axis, E8M0 scales by the
floor rule. NVFP4: E2M1 in blocks of 16 with E4M3 block scales under an fp32 tensor scale.
FP4 paper (Wang et al. 2025): E2M1 vector-wise (weights per output channel, activations per
token) with power-of-two scales sf = 2**floor(log2(6/amax)), i.e. scale = 2**ceil(log2(amax/6)).
NF4: lowprec's variant of QLoRA's format: blocks of 64, absmax scales double-quantized to linear
int8 in blocks of 256 (after removing their mean), codes picked against the rebuilt scale.
NF4_QLORA: QLoRA's own scheme, bit for bit as bitsandbytes (codes against the exact absmax, the
absmax minus its mean in bitsandbytes' 8-bit dynamic code in blocks of 256); a stored weight
format (``WEIGHT_FORMATS``), not a Quantizer: see ``lowprec.quant.nf4_qlora``.
"""

import dataclasses

from lowprec.quant.nf4_qlora import NF4QLoRA
from lowprec.quant.quantizer import Quantizer
from lowprec.registry import Registry

MXFP8_E4M3 = Quantizer("e4m3fn", "block(32)", scale="pow2_floor")
MXFP8_E5M2 = Quantizer("e5m2", "block(32)", scale="pow2_floor")
MXFP6_E3M2 = Quantizer("e3m2fn", "block(32)", scale="pow2_floor")
MXFP6_E2M3 = Quantizer("e2m3fn", "block(32)", scale="pow2_floor")
MXFP4 = Quantizer("e2m1fn", "block(32)", scale="pow2_floor")
MXINT8 = Quantizer("mxint8", "block(32)", scale="pow2_floor")
NVFP4 = Quantizer("e2m1fn", "block(16)", scale="e4m3fn", tensor_scale=True)
FP4_PAPER_WEIGHT = Quantizer("e2m1fn", "channel", scale="pow2_ceil")
FP4_PAPER_ACTIVATION = Quantizer("e2m1fn", "token", scale="pow2_ceil")
INT8_CHANNEL = Quantizer("int8", "channel")
INT4_CHANNEL = Quantizer("int4", "channel")
NF4 = Quantizer("nf4", "block(64)", double_quant=Quantizer("int8", "block(256)"))
NF4_QLORA = NF4QLoRA()

def _check(name: str, q: Quantizer) -> Quantizer:
    if not isinstance(q, Quantizer):
        raise TypeError(f"register({name!r}, ...) needs a Quantizer; got {type(q).__name__}")
    return q


# ``"nf4(granularity='block(128)')"`` is a preset with Quantizer fields replaced.
PRESET_REGISTRY = Registry("preset", check=_check, derive=lambda q, kwargs: q.replace(**kwargs),
                           params=lambda q: [f.name for f in dataclasses.fields(Quantizer)])
for _name, _q in {
    "mxfp8_e4m3": MXFP8_E4M3, "mxfp8_e5m2": MXFP8_E5M2, "mxfp6_e3m2": MXFP6_E3M2,
    "mxfp6_e2m3": MXFP6_E2M3, "mxfp4": MXFP4, "mxint8": MXINT8, "nvfp4": NVFP4,
    "fp4_paper_weight": FP4_PAPER_WEIGHT, "fp4_paper_activation": FP4_PAPER_ACTIVATION,
    "int8_channel": INT8_CHANNEL, "int4_channel": INT4_CHANNEL, "nf4": NF4,
}.items():
    PRESET_REGISTRY.register(_name, _q)
PRESETS = PRESET_REGISTRY._entries  # the registry's own dict
# Stored weight formats that are not Quantizers (no fake quantization, no estimator).
WEIGHT_FORMATS = {"nf4_qlora": NF4_QLORA}


def get(spec: str) -> Quantizer:
    """A preset by name, or with some Quantizer fields replaced (``"nf4(granularity='block(128)')"``)."""
    return PRESET_REGISTRY.get(spec)
