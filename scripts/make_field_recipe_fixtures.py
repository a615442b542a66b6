"""Writes tests/fixtures/field_recipes.npz: torchao's quantization of small tensors, the
reference that tests/ops/test_field_recipes.py compares lowprec's field recipes against
without torch.

    pip install torchao   # 0.18.0 with torch 2.13 (CPU) made the committed file
    python scripts/make_field_recipe_fixtures.py

Arrays (all float32, dequantized values unless named otherwise):
- ``x``: (32, 256) Student-t (df=3) samples times 2**k per row (k in -20..20), the input;
- ``rowwise_dim{-1,0}``: torchao float8 rowwise (E4M3, axiswise scales along that dim,
  power-of-two scales: ``Float8LinearConfig.from_recipe_name("rowwise")``'s casts);
- ``mxfp8_{floor,rceil}``, ``mxfp4_floor``: ``MXTensor.to_mx`` with blocks of 32 along the last
  dim and that scale mode;
- ``nvfp4``: ``NVFP4Tensor.to_nvfp4`` of ``x`` with a per-tensor scale (``per_tensor_amax_to_scale``);
  ``nvfp4_mild``: the same of ``x_mild``, ``x`` with its rows' 2**k in -4..4 (its block scales
  stay in E4M3's normal range, where torchao's clamp of the block scales at 2**-6 does nothing).

And tests/fixtures/field_recipes_mxfp4.npz, for ``mxfp4_tseng`` (``main`` writes both; ``--mxfp4``
writes only this one):
- ``y``: (16, 128) Student-t (df=2) samples times 2**k per row (k in -30..30);
- ``mx_scale``: ``MXTensor.to_mx(y, float4_e2m1fn_x2, 32, FLOOR).scale`` as float32 (the OCP E8M0
  block scales, 2**(floor(log2 amax) - 2)), shape (16, 4);
- ``tseng_unit``: torchao's E2M1 cast (``f32_to_f4_unpacked``, round to nearest even) of
  ``y * 0.75 / mx_scale`` (fp32), decoded (``f4_unpacked_to_f32``): the grid values of Tseng et
  al.'s 3/4-scaled blocks under round-to-nearest (their training rounds them stochastically).
"""

import pathlib

import numpy as np
import torch
import torchao
from torchao.float8.config import Float8LinearConfig, ScalingGranularity
from torchao.float8.float8_scaling_utils import hp_tensor_to_float8_dynamic
from torchao.float8.float8_training_tensor import LinearMMConfig
from torchao.prototype.mx_formats.config import ScaleCalculationMode
from torchao.prototype.mx_formats.mx_tensor import MXTensor
from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "field_recipes.npz"
OUT_MXFP4 = OUT.with_name("field_recipes_mxfp4.npz")


def main():
    rng = np.random.default_rng(2026)
    x = rng.standard_t(3, (32, 256)) * np.exp2(rng.integers(-20, 21, (32, 1)))
    xt = torch.tensor(x.astype(np.float32))
    out = {"x": xt.numpy(), "torchao_version": np.array(torchao.__version__)}
    cfg = Float8LinearConfig.from_recipe_name("rowwise")
    cast = cfg.cast_config_input
    assert cast.scaling_granularity is ScalingGranularity.AXISWISE and cfg.round_scales_to_power_of_2
    for dim in (-1, 0):
        t = hp_tensor_to_float8_dynamic(xt, cast.target_dtype, LinearMMConfig(), scaling_granularity=
                                        cast.scaling_granularity, axiswise_dim=dim,
                                        round_scales_to_power_of_2=cfg.round_scales_to_power_of_2)
        out[f"rowwise_dim{dim}"] = (t._data.to(torch.float32) / t._scale).numpy()
    for name, dtype, mode in (("mxfp8_floor", torch.float8_e4m3fn, ScaleCalculationMode.FLOOR),
                              ("mxfp8_rceil", torch.float8_e4m3fn, ScaleCalculationMode.RCEIL),
                              ("mxfp4_floor", torch.float4_e2m1fn_x2, ScaleCalculationMode.FLOOR)):
        out[name] = MXTensor.to_mx(xt, dtype, 32, scaling_mode=mode).dequantize(torch.float32).numpy()
    x_mild = torch.tensor((x * np.exp2(rng.integers(-4, 5, (32, 1)) - np.round(np.log2(np.abs(x).max(1,
                                                                                  keepdims=True))))).astype(np.float32))
    out["x_mild"] = x_mild.numpy()
    for name, t in (("nvfp4", xt), ("nvfp4_mild", x_mild)):
        scale = per_tensor_amax_to_scale(t.abs().max())
        out[name] = NVFP4Tensor.to_nvfp4(t, per_tensor_scale=scale).dequantize(torch.float32).numpy()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    mxfp4()


def mxfp4():
    from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, f32_to_f4_unpacked

    rng = np.random.default_rng(2502)
    y = torch.tensor((rng.standard_t(2, (16, 128)) * np.exp2(rng.integers(-30, 31, (16, 1)))).astype(np.float32))
    t = MXTensor.to_mx(y, torch.float4_e2m1fn_x2, 32, scaling_mode=ScaleCalculationMode.FLOOR)
    scale = t.scale.view(torch.float8_e8m0fnu).to(torch.float32).reshape(16, 4)
    scaled = (y.reshape(16, 4, 32) * 0.75 / scale[..., None]).reshape(16, 128)
    unit = f4_unpacked_to_f32(f32_to_f4_unpacked(scaled))
    np.savez_compressed(OUT_MXFP4, y=y.numpy(), mx_scale=scale.numpy(), tseng_unit=unit.numpy(),
                        torchao_version=np.array(torchao.__version__))


if __name__ == "__main__":
    import sys

    mxfp4() if "--mxfp4" in sys.argv[1:] else main()
