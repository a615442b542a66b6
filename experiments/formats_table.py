"""A table of formats and their quantization error on realistic tensors.

    python -m experiments.formats_table

For every built-in quantizer setting: bits per value (with scale overhead), relative RMS
error and SQNR on a Gaussian weight matrix and on a heavy-tailed activation matrix with
outlier channels (as LLM activations have). No download: the tensors are drawn here.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import lowprec as lp

SETTINGS = {
    "bf16 (cast)": lp.Quantizer("bf16", source="fixed"),
    "fp16 (cast)": lp.Quantizer("fp16", source="fixed"),
    "e4m3fn per-tensor": lp.Quantizer("e4m3fn"),
    "e5m2 per-tensor": lp.Quantizer("e5m2"),
    "e4m3fn per-token": lp.Quantizer("e4m3fn", "token"),
    "mxfp8 (e4m3)": lp.quant.presets.MXFP8_E4M3,
    "mxfp6 (e3m2)": lp.quant.presets.MXFP6_E3M2,
    "mxfp6 (e2m3)": lp.quant.presets.MXFP6_E2M3,
    "int8 per-token": lp.Quantizer("int8", "token"),
    "e2m1fn per-tensor": lp.Quantizer("e2m1fn"),
    "e2m1fn per-token (FP4 paper)": lp.quant.presets.FP4_PAPER_ACTIVATION,
    "mxfp4": lp.quant.presets.MXFP4,
    "nvfp4": lp.quant.presets.NVFP4,
    "e1m2 per-token": lp.Quantizer("e1m2", "token"),
    "e3m0 per-token": lp.Quantizer("e3m0", "token"),
    "int4 per-token": lp.Quantizer("int4", "token"),
    "nf4 (blocks of 64, double quant)": lp.Quantizer("nf4", "block(64)",
                                                     double_quant=lp.Quantizer("int8", "block(256)")),
}


def tensors(seed: int, rows: int, cols: int):
    kw, ka, ko = jax.random.split(jax.random.key(seed), 3)
    weight = jax.random.normal(kw, (rows, cols)) * 0.02
    act = jax.random.t(ka, 4.0, (rows, cols))
    outlier_cols = jax.random.choice(ko, cols, (max(1, cols // 100),), replace=False)
    act = act.at[:, outlier_cols].multiply(20.0)  # a few outlier channels
    return {"weight N(0, 0.02)": weight, "activation t(4) + outlier channels": act}


def sqnr_db(x, y) -> float:
    x64, e = np.asarray(x, np.float64), np.asarray(y, np.float64) - np.asarray(x, np.float64)
    return float(10 * np.log10(np.sum(x64 ** 2) / max(np.sum(e ** 2), 1e-300)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = tensors(args.seed, args.rows, args.cols)
    header = f"{'setting':34s} {'bits/value':>10s}" + "".join(f" {n[:24]:>26s}" for n in data)
    print(header + "\n" + " " * 46 + "   SQNR dB (rel. RMS err)" * len(data))
    for name, q in SETTINGS.items():
        cells = []
        for x in data.values():
            y = jax.jit(q)(x)
            rel = float(jnp.linalg.norm(y - x) / jnp.linalg.norm(x))
            cells.append(f" {sqnr_db(x, y):12.1f} ({rel:9.2e})")
        bits = 8 * q.quantize(data["weight N(0, 0.02)"]).nbytes() / data["weight N(0, 0.02)"].size
        if q.source == "fixed":
            bits = q.format.bits
        print(f"{name:34s} {bits:10.2f}" + "".join(cells))


if __name__ == "__main__":
    main()
