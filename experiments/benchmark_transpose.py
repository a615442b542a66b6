"""How fast can an operand be quantized to FP8 *and* transposed (what the backward GEMMs of a
current-scaling FP8 layer need), measured in one run.

    python -m experiments.benchmark_transpose                      # 8192 x 8192 bf16 (GPU)
    python -m experiments.benchmark_transpose --rows 256 --cols 512  # a quick look on a CPU

cuBLASLt's FP8 GEMM takes both operands with the contracted dimension last, so the weight
gradient dW = x^T g needs x and g transposed after (or while) they are quantized. Each variant
below starts from the bf16 operand and its (power-of-two) scale and ends with E4M3 values in
the transposed layout; all give the same bits (checked), only the kernels XLA emits differ:

- ``quantize`` (no transpose): the floor, one elementwise pass;
- ``fused``: transpose(convert(x * s)) as one jit (XLA fuses the transpose into the quantize);
- ``fp8 transpose``: quantize, then an optimization barrier, then the 1-byte transpose;
- ``bf16 transpose``: the 2-byte transpose first, a barrier, then the quantize;
- ``both layouts``: the quantized operand and its transpose from one jit (what a layer needs:
  the forward GEMM uses one, the weight-gradient GEMM the other);
- ``pallas: both layouts``: the same from one Pallas kernel (``--block`` square tiles): each tile
  read once, written in both layouts, as Transformer Engine's cast-transpose kernel does (the
  interpreter on a CPU, Triton on a GPU): ``lowprec.ops.cast_transpose``, which
  ``Recipe(fp8_transposes="pallas")`` uses.

Times are medians; ``x copy`` compares with a bf16 copy of the operand (read + write).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import environment, time_fn, write_json
from lowprec.ops import cast_transpose

F8 = jnp.float8_e4m3fn


def _q(x, s):
    return (x.astype(jnp.float32) * s).astype(F8)


def _pallas(x, s, block: int):
    """The library's kernel (``lowprec.ops.cast_transpose``); its clip to E4M3's range changes
    nothing here (the benchmark's operand stays far inside it)."""
    if not cast_transpose.supported(x.shape, 1, block):
        raise ValueError(f"--block {block} must divide the operand's shape {x.shape}")
    return cast_transpose.cast_transpose(x, s, F8, float(jnp.finfo(F8).max), 1, block=block)


def variants(block: int = 64) -> dict:
    barrier = jax.lax.optimization_barrier
    return {
        "quantize (no transpose)": jax.jit(lambda x, s: _q(x, s)),
        "fused: transpose(quantize(x))": jax.jit(lambda x, s: _q(x, s).T),
        "fp8 transpose: quantize, barrier, transpose": jax.jit(lambda x, s: barrier(_q(x, s)).T),
        "bf16 transpose: transpose, barrier, quantize": jax.jit(lambda x, s: _q(barrier(x.T), s)),
        "both layouts: quantize and transpose(quantize)": jax.jit(lambda x, s: (_q(x, s), _q(x, s).T)),
        "pallas: both layouts in one kernel": jax.jit(lambda x, s: _pallas(x, s, block)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--block", type=int, default=64, help="tile of the Pallas variant")
    parser.add_argument("--out", default="experiments/results/benchmarks/transpose.json")
    args = parser.parse_args(argv)
    x = jax.random.normal(jax.random.key(0), (args.rows, args.cols), jnp.bfloat16)
    s = jnp.float32(2.0 ** 4)
    t_copy = time_fn(jax.jit(lambda v: -v), x, repeats=args.repeats)
    want = np.asarray(_q(x, s)).T.view(np.uint8)
    results = {"copy (bf16)": {"seconds": t_copy}}
    for name, fn in variants(args.block).items():
        out = fn(x, s)
        got = out[-1] if isinstance(out, tuple) else out
        bits = np.asarray(got).view(np.uint8)
        expected = want.T if name.startswith("quantize (no transpose)") else want
        same = bits.shape == expected.shape and bool((bits == expected).all())
        if isinstance(out, tuple):  # the untransposed layout too
            same = same and bool((np.asarray(out[0]).view(np.uint8) == want.T).all())
        t = time_fn(fn, x, s, repeats=args.repeats)
        results[name] = {"seconds": t, "time_vs_copy": t / t_copy, "same_bits": same}
    env = environment()
    write_json(args.out, {"environment": env, "shape": [args.rows, args.cols], "results": results})
    print(f"{'variant':50s} {'ms':>8s} {'x copy':>7s}  bits")
    for name, r in results.items():
        extra = "" if "time_vs_copy" not in r else f"{r['time_vs_copy']:7.2f}  {'same' if r['same_bits'] else 'DIFFER'}"
        print(f"{name:50s} {r['seconds'] * 1e3:8.3f} {extra}")
    print(f"device: {env['device']}; wrote {args.out}")


if __name__ == "__main__":
    main()
