"""lowprec: train neural networks with pluggable number formats (JAX / Flax NNX).

    import lowprec as lp
    f = lp.formats.get("e4m3fn")
    q = lp.Quantizer(format="e2m1fn", granularity="channel")
    y = q(x)
"""

from lowprec import formats, quant
from lowprec.quant import Granularity, QTensor, Quantizer

__version__ = "0.1.0"
__all__ = ["Granularity", "QTensor", "Quantizer", "formats", "quant"]
