"""QuantAttend: a tied output layer (logits = x · embedding tableᵀ) whose GEMMs follow a Recipe."""

from __future__ import annotations

from flax import nnx

from lowprec import ops
from lowprec.nn.base import QuantModule
from lowprec.ops import Recipe


class QuantAttend(QuantModule):
    """``nnx.Embed.attend`` as a quantized layer: ``inputs`` (..., d) against the embedding table
    (vocab, d), contracted over d. It holds no parameters (the table is the embedding's, passed at
    call) but has a ``recipe`` like any quantized layer, so a tied LM head is assigned recipes by
    its path; the weight's per-channel scales are per vocabulary row, over d: the numbers of a
    ``QuantDense`` whose kernel is the table transposed.
    """

    def __init__(self, *, recipe: Recipe | str = "none", telemetry: bool = False, dtype=None):
        self.dtype = dtype
        self._init_quant(recipe, telemetry)

    def _stack_shape(self) -> tuple[int, ...]:
        return ()

    def __call__(self, inputs, table, *, key=None, rngs: nnx.Rngs | None = None):
        """``inputs @ table.T``, in ``dtype`` (default: the inputs')."""
        dtype = self.dtype or inputs.dtype
        dn = (((inputs.ndim - 1,), (1,)), ((), ()))
        return self._gemm(ops.dot_general, inputs.astype(dtype), table.astype(dtype), dn, key=key, rngs=rngs)
