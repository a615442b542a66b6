"""lowprec: train neural networks with pluggable number formats (JAX / Flax NNX).

    import lowprec as lp
    f = lp.formats.get("e4m3fn")
    q = lp.Quantizer(format="e2m1fn", granularity="channel", estimator="dge")
    y = lp.dot_general(x, w, (((1,), (0,)), ((), ())), lp.recipes.get("fp4_paper"))
    layer = lp.nn.QuantDense(512, 2048, recipe="fp8", rngs=nnx.Rngs(0))
    tx = lp.optim.master_weights(optax.adamw(1e-3), param_dtype="bfloat16")
"""

from lowprec import formats, nn, ops, optim, quant
from lowprec.ops import dot_general, einsum, recipes
from lowprec.quant import Granularity, QTensor, Quantizer

__version__ = "0.1.0"
__all__ = ["Granularity", "QTensor", "Quantizer", "dot_general", "einsum", "formats", "nn", "ops", "optim",
           "quant", "recipes"]
