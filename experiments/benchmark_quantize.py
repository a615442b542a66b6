"""Throughput of fake quantization as a fraction of copy bandwidth, measured in one run.

    python -m experiments.benchmark_quantize                 # 1 GiB fp32 tensor (GPU)
    python -m experiments.benchmark_quantize --gib 0.01      # a quick look on a CPU
    python -m experiments.benchmark_quantize --only mxfp4    # the variants whose name matches

Each variant's output also gets a digest (SHA-256 of its bytes): equal digests under two
compiler settings (``experiments.xla_flags_study``) mean bit-identical quantization.

Every variant reads the fp32 tensor and writes an fp32 tensor of the same size, like the
copy it is compared with; the ratio is copy time / quantize time (1.0 = copy speed).
Current (absmax) scaling must read the tensor twice (amax first, then quantize), so its
ceiling is copy / (copy + amax read), about 2/3 of copy speed (the run prints it), unless the
amax pass is fused away; delayed scaling
(scale from an amax history, current amax recorded in the same pass) has no such ceiling.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import lowprec as lp
from experiments.common import environment, time_fn, write_json


# MXFP4 three ways: the library's default (kernel="auto": the one-pass Pallas kernel on a GPU),
# and each path forced; their digests are compared (same bits).
MXFP4, XLA_MXFP4, PALLAS_MXFP4 = ("MXFP4 (e2m1fn, blocks of 32, E8M0; default kernel='auto')",
                                  "MXFP4, XLA path (kernel='xla')", "MXFP4, Pallas kernel (kernel='pallas')")


def variants(rows: int, cols: int):
    """(name, quantizer, extra args) for each measured variant; the tensor is (rows, cols)."""
    e4m3 = lp.Quantizer("e4m3fn", "tensor")
    delayed = lp.Quantizer("e4m3fn", "tensor", source="delayed")
    history = jnp.full((16, 1, 1), 3.0, jnp.float32)
    mxfp4 = lp.quant.presets.MXFP4

    def with_history(x):
        return delayed(x, amax_history=history), jnp.max(jnp.abs(x))  # amax recorded in the same pass

    return [
        ("e4m3fn per-tensor (current amax)", jax.jit(e4m3)),
        ("e4m3fn per-tensor (delayed amax, current recorded)", jax.jit(with_history)),
        ("e2m1fn per-channel (scale per column)", jax.jit(lp.Quantizer("e2m1fn", "channel"))),
        ("e2m1fn per-token (scale per row)", jax.jit(lp.Quantizer("e2m1fn", "token"))),
        (MXFP4, jax.jit(mxfp4)),
        (XLA_MXFP4, jax.jit(mxfp4.replace(kernel="xla"))),
        (PALLAS_MXFP4, jax.jit(mxfp4.replace(kernel="pallas"))),
        ("mxfp8 e4m3 (blocks of 32, E8M0)", jax.jit(lp.quant.presets.MXFP8_E4M3)),
        # The XLA path with the block amax traced as an elementwise max of the block's slices
        # (Quantizer.block_amax): same bits, possibly one pass instead of two.
        ("mxfp4 XLA, block amax by slices", jax.jit(mxfp4.replace(block_amax="slices", kernel="xla"))),
        ("mxfp8 e4m3, block amax by slices", jax.jit(lp.quant.presets.MXFP8_E4M3.replace(block_amax="slices"))),
    ]


def check_bits(x) -> int:
    """Mismatches of e4m3fn quantization against ml_dtypes on this device (should be 0)."""
    f = lp.formats.get("e4m3fn")
    sample = x[:64].reshape(-1) * 100.0
    got = np.asarray(jax.jit(lambda v: f.quantize(v, overflow="ieee"))(sample))
    ref = np.asarray(sample).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    same = (got.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(got) & np.isnan(ref))
    return int((~same).sum())


def digest(y) -> str:
    """A short SHA-256 of an output's bytes (a tuple's first element: the quantized tensor)."""
    y = y[0] if isinstance(y, tuple) else y
    return hashlib.sha256(np.ascontiguousarray(np.asarray(y)).tobytes()).hexdigest()[:16]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the fp32 tensor in GiB")
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", default=None, help="regex: only the variants whose name matches")
    parser.add_argument("--out", default="experiments/results/benchmarks/quantize.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    rows = max(64, int(args.gib * 2 ** 30 / 4 / args.cols) // 64 * 64)
    x = jax.random.normal(jax.random.key(0), (rows, args.cols), jnp.float32)
    nbytes = x.size * 4
    copy = jax.jit(lambda v: -v)
    t_copy = time_fn(copy, x, repeats=args.repeats)
    t_read = time_fn(jax.jit(lambda v: jnp.max(jnp.abs(v))), x, repeats=args.repeats)
    results = {"copy": {"seconds": t_copy, "GB/s (read+write)": 2 * nbytes / t_copy / 1e9},
               "amax only (read)": {"seconds": t_read, "GB/s (read)": nbytes / t_read / 1e9}}
    chosen = [(n, fn) for n, fn in variants(rows, args.cols) if args.only is None or re.search(args.only, n)]
    if not chosen:
        parser.error(f"--only {args.only!r} matches no variant; variants: "
                     + "; ".join(n for n, _ in variants(rows, args.cols)))
    for name, fn in chosen:
        t = time_fn(fn, x, repeats=args.repeats)
        results[name] = {"seconds": t, "fraction_of_copy": t_copy / t,
                         "GB/s (read+write)": 2 * nbytes / t / 1e9, "digest": digest(fn(x))}
    for name in (MXFP4, PALLAS_MXFP4):  # same bits as the XLA path (computed here if not timed)
        if name in results:
            xla = results[XLA_MXFP4]["digest"] if XLA_MXFP4 in results else digest(
                jax.jit(lp.quant.presets.MXFP4.replace(kernel="xla"))(x))
            results[name]["same_bits_as_xla"] = results[name]["digest"] == xla
    # Current scaling reads twice (amax, then quantize+write): its ceiling is copy / (copy + read).
    two_pass = t_copy / (t_copy + t_read)
    payload = {"environment": environment(), "tensor": {"shape": [rows, args.cols], "bytes": nbytes},
               "bit_mismatches_vs_ml_dtypes": check_bits(x), "two_pass_ceiling_fraction_of_copy": two_pass,
               "results": results}
    write_json(args.out, payload)
    print(f"{'variant':60s} {'ms':>8s} {'GB/s':>8s} {'x copy':>7s}")
    for name, r in results.items():
        gbs = r.get("GB/s (read+write)", r.get("GB/s (read)"))
        frac = r.get("fraction_of_copy")
        same = "" if "same_bits_as_xla" not in r else (
            "  same bits as XLA" if r["same_bits_as_xla"] else "  BITS DIFFER")
        print(f"{name:60s} {r['seconds'] * 1e3:8.3f} {gbs:8.0f} {'' if frac is None else f'{frac:7.2f}'}{same}")
    print(f"two-pass ceiling of current scaling (copy / (copy + amax read)): {two_pass:.2f} x copy")
    print(f"device: {payload['environment']['device']}; bit mismatches vs ml_dtypes: "
          f"{payload['bit_mismatches_vs_ml_dtypes']}; wrote {args.out}")


if __name__ == "__main__":
    main()
