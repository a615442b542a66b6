"""Writes tests/fixtures/nf4_qlora_bnb.npz: QLoRA's NF4 with double quantization, by bitsandbytes.

Run (needs torch and bitsandbytes, which lowprec does not depend on):
    PYTHONPATH=<dir with bitsandbytes> python scripts/make_nf4_fixture.py
Each case stores the input (fp32, or bf16 as uint16 bits), the packed 4-bit codes, the 8-bit
absmax codes, the offset (mean of the absmax values), the fp32 absmax of each 256-block of
absmax values, the dequantized output (as its bits); the file also holds the versions used and
`dynamic_map`, the bits of `create_dynamic_map(signed=True)` (the 8-bit code of the absmax values).
"""

import pathlib

import bitsandbytes as bnb
import bitsandbytes.functional as F
import numpy as np
import torch

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "nf4_qlora_bnb.npz"


def cases():
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(64 * 256 + 64 * 7 + 5, generator=g)  # 264 blocks: a 256-block and a short one
    heavy = torch.distributions.StudentT(2.0).sample((3000,)) * 0.02
    code = F.get_4bit_type("nf4", device="cpu")
    mids = (code[:-1] + code[1:]) / 2
    ties = torch.cat([mids, torch.nextafter(mids, mids + 1), torch.nextafter(mids, mids - 1), code])
    ties = torch.cat([ties, torch.ones(1)]).repeat(3)[:128]  # two blocks, each with amax 1
    zeros = torch.cat([torch.zeros(128), torch.randn(100, generator=g)])  # two all-zero blocks
    tiny = torch.randn(640, generator=g) * 1e-3 + torch.linspace(-3, 3, 640)
    yield "normal_f32", normal
    yield "normal_bf16", normal[:4100].to(torch.bfloat16)
    yield "heavy_f32", heavy.float()
    yield "heavy_bf16", heavy.to(torch.bfloat16)
    yield "ties_f32", ties
    yield "zeros_f32", zeros
    yield "ramp_f32", tiny
    yield "matrix_bf16", torch.randn(96, 40, generator=g).to(torch.bfloat16)


def main():
    torch.manual_seed(0)
    arrays = {"bnb_version": np.array(bnb.__version__), "torch_version": np.array(torch.__version__),
              "dynamic_map": F.create_dynamic_map(signed=True).numpy().view(np.uint32)}
    for name, x in cases():
        packed, st = F.quantize_4bit(x, blocksize=64, compress_statistics=True, quant_type="nf4")
        y = F.dequantize_4bit(packed, st)
        bits = (lambda t: t.view(torch.int16).numpy().view(np.uint16)) if x.dtype == torch.bfloat16 else \
            (lambda t: t.numpy().view(np.uint32))
        arrays |= {f"{name}/x": bits(x), f"{name}/codes": packed.numpy().reshape(-1),
                   f"{name}/absmax_codes": st.absmax.numpy(), f"{name}/offset": st.offset.numpy().reshape(1),
                   f"{name}/absmax2": st.state2.absmax.numpy(), f"{name}/y": bits(y.reshape(x.shape))}
    np.savez_compressed(OUT, **arrays)
    print(OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
