"""From a tensor to its quantized form and back (layer 2): scaling, Quantizer, estimators."""

from lowprec.quant import presets
from lowprec.quant.estimators import STE, Estimator, get_estimator, register_estimator
from lowprec.quant.granularity import Granularity
from lowprec.quant.qtensor import QTensor
from lowprec.quant.quantizer import Quantizer, update_amax_history
from lowprec.quant.scaling import SCALE_RULES, amax, scale_from_amax

__all__ = [
    "Estimator", "Granularity", "QTensor", "Quantizer", "SCALE_RULES", "STE", "amax", "get_estimator",
    "presets", "register_estimator", "scale_from_amax", "update_amax_history",
]
