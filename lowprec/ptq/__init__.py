"""Post-training quantization (PTQ) of a trained model.

    from lowprec import ptq
    from lowprec.train import restore
    run = restore.load_run("runs/20m")                                  # a trained run
    spec = ptq.Spec(weights="int4", method="gptq", activations="int8", act_calibration="mse")
    qmodel, errors = ptq.quantize_model(run.model, spec, calibration_batches)
    ptq.loss(qmodel, eval_batches)                                    # held-out loss after
    ptq.save(qmodel, "int4-gptq")                                     # codes + scales, orbax

Weights of the targeted linear layers become packed codes and scales (``lp.nn.QuantizedDense``)
rounded to nearest or by GPTQ (``lowprec.ptq.gptq``); inputs optionally pass through an
activation quantizer whose static scale was calibrated (absmax, percentile, MSE search) on a few
batches. ``experiments/ptq.py`` runs this from a checkpoint and writes the report;
``configs/ptq.py`` sweeps formats x model sizes. Sits beside ``train`` (it uses models, nn,
quant and data; nothing below imports it).
"""

from lowprec.ptq.apply import METHODS, Spec, layer_errors, quantize_model
from lowprec.ptq.calibration import activation_quantizer, clip_values
from lowprec.ptq.capture import collect
from lowprec.ptq.evaluate import loss
from lowprec.ptq.gptq import gptq, inverse_hessian_factor
from lowprec.ptq.modules import QuantizedInput
from lowprec.ptq.storage import disk_bytes, load, memory_bytes, save

__all__ = [
    "METHODS", "QuantizedInput", "Spec", "activation_quantizer", "clip_values", "collect",
    "disk_bytes", "gptq", "inverse_hessian_factor", "layer_errors", "load", "loss", "memory_bytes",
    "quantize_model", "save",
]
