"""optax wrappers for low-precision training (layer 4): master weights, loss scaling,
low-precision optimizer state, and the precision policy that selects them.

    tx = lp.optim.master_weights(optax.adamw(1e-3), param_dtype="bfloat16")
    tx = lp.optim.loss_scaling(lp.optim.master_weights(optax.adam(1e-3), param_dtype="float16"))
    tx = lp.optim.quantized_state(optax.adam(1e-3), mu=lp.Quantizer("e4m3fn"), nu=lp.Quantizer("fp16"))
    tx = lp.optim.get_policy("bf16_master").optimizer(optax.adamw(1e-3))
"""

from lowprec.optim.find import find_state
from lowprec.optim.loss_scale import LossScaleState, loss_scaling, scale_loss
from lowprec.optim.lowp_state import QuantizedState, quantized_state, state_nbytes
from lowprec.optim.master import MasterWeightsState, master_params, master_weights
from lowprec.optim.policy import PRESETS, Policy, get_policy

__all__ = [
    "LossScaleState", "MasterWeightsState", "PRESETS", "Policy", "QuantizedState", "find_state", "get_policy",
    "loss_scaling", "master_params", "master_weights", "quantized_state", "scale_loss", "state_nbytes",
]
