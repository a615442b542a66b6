"""From a tensor to its quantized form and back (layer 2): scaling, Quantizer, estimators, OCC."""

from lowprec.quant import occ, presets
from lowprec.quant.estimators import (
    CLIPPED_STE, DGE, STE, Estimator, dge, dge_derivative, estimator_names, get_estimator, register_estimator,
)
from lowprec.quant.execution import Execution
from lowprec.quant.granularity import Granularity
from lowprec.quant.occ import OCC
from lowprec.quant.occ import clamp as clamp_outliers
from lowprec.quant.qtensor import QTensor
from lowprec.quant.quantizer import Quantizer, update_amax_history
from lowprec.quant.scaling import SCALE_RULES, scale_from_amax

__all__ = [
    "CLIPPED_STE", "DGE", "Estimator", "Execution", "Granularity", "OCC", "QTensor", "Quantizer", "SCALE_RULES",
    "STE", "clamp_outliers", "dge", "dge_derivative", "estimator_names", "get_estimator", "occ", "presets",
    "register_estimator", "scale_from_amax", "update_amax_history",
]
