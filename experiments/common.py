"""Shared helpers for benchmarks: timing, environment record, JSON output."""

from __future__ import annotations

import collections
import datetime
import glob
import gzip
import json
import logging
import math
import os
import platform
import re
import sys
import time

import jax
import jaxlib
import numpy as np

from lowprec import ops


def cli_logging(fmt: str = "%(asctime)s %(name)s: %(message)s", level: int = logging.INFO) -> None:
    """INFO logging to stderr for a command-line script. Replaces the root handlers that an
    import may have installed (orbax does), which would otherwise make ``basicConfig`` a no-op
    and leave the root at WARNING: the script's INFO lines would be lost."""
    logging.basicConfig(level=level, format=fmt, force=True)


def time_fn(fn, *args, warmup: int = 3, repeats: int = 20) -> float:
    """Median wall time (seconds) of ``fn(*args)`` with the device synchronized."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def environment() -> dict:
    """Device, date, versions and the command that produced a result."""
    import flax
    import ml_dtypes
    import optax

    dev = jax.devices()[0]
    return {
        "command": " ".join([os.path.basename(sys.executable), "-m", _module()] + sys.argv[1:]),
        "device": getattr(dev, "device_kind", str(dev)),
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "numpy": np.__version__,
    }


def gemm_report(hlo_text: str) -> dict:
    """The GEMMs of a compiled program: each GEMM's kind and operand dtypes, a count per
    "kind(operand dtypes)", how many take FP8 operands, and the FP8 verdict (native only for
    cuBLASLt's FP8 GEMM, ``__cublas$lt$matmul$f8``)."""
    gemms = ops.parse_gemms(hlo_text)
    fp8 = sum(kind == ops.FP8_TARGET for kind, _ in gemms)
    dtypes = collections.Counter(f"{kind}({','.join(d)})" for kind, d in gemms)
    return {"fp8_path": "native" if fp8 else "simulated", "fp8_gemms": fp8,
            "fp8_operand_gemms": sum(any(t.startswith("f8") for t in d) for _, d in gemms),
            "gemm_dtypes": dict(dtypes.most_common()),
            "gemms": [{"kind": k, "operands": list(d)} for k, d in gemms]}


def device_memory() -> dict | None:
    """The first device's allocator counters, where the backend has them (GPU, TPU; not CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return {k: stats[k] for k in ("bytes_in_use", "peak_bytes_in_use") if k in stats}


def memory_report(compiled, before: dict | None) -> dict:
    """Peak device bytes of one step of ``compiled``, from XLA's memory analysis (any backend:
    arguments, outputs and temporaries, less donated aliases), and on a GPU also from the
    allocator: its peak counter never resets, so it gives this step's peak (over ``before``, the
    counters read before the step's arguments were made) only where it rose, else a bound."""
    m = compiled.memory_analysis()
    parts = {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
             "temp_bytes": m.temp_size_in_bytes, "alias_bytes": m.alias_size_in_bytes}
    total = parts["argument_bytes"] + parts["output_bytes"] + parts["temp_bytes"] - parts["alias_bytes"]
    out = {"method": "xla memory_analysis: arguments + outputs + temporaries - aliases", "peak_bytes": int(total),
           **{k: int(v) for k, v in parts.items()},
           # buffer assignment's own live-range peak; on CPU it leaves the temporaries out
           "xla_peak_memory_in_bytes": int(getattr(m, "peak_memory_in_bytes", -1))}
    after = device_memory()
    if before and after and "peak_bytes_in_use" in after:
        rose = after["peak_bytes_in_use"] > before["peak_bytes_in_use"]
        out["allocator"] = {
            "method": "memory_stats peak_bytes_in_use - bytes_in_use before the row"
                      + ("" if rose else " (no new peak: an upper bound set by an earlier row)"),
            "peak_bytes": int(after["peak_bytes_in_use"] - before["bytes_in_use"]), "exact": rose}
    return out


def _module() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else os.path.basename(sys.argv[0])


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


def kernel_times(trace_dir: str, steps: int) -> dict[str, float]:
    """Seconds per step of each device kernel name in the newest perfetto trace under ``trace_dir``."""
    path = max(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    totals = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        if "GPU" not in names.get(e["pid"], "") and "/device:" not in names.get(e["pid"], ""):
            continue
        totals[e["name"]] += e["dur"] * 1e-6 / steps
    if not totals:
        print(f"no device kernels in {path}; tracks: {sorted(set(names.values()))}")
    return dict(totals.most_common())


# What a device kernel is, from its name and, for XLA fusions, the HLO instruction it runs
# (the kernel is named after the instruction's ``deduplicated_name`` or ``scheduling_name``).
_GEMM = re.compile(r"nvjet|gemm|cutlass|xmma|cublas|matmul", re.I)
_FP8_GEMM = re.compile(r"nvjet_\w*?_[qr][qr]t|f8|e4m3|e5m2", re.I)
_ATTENTION = re.compile(r"cudnn|fmha|flash|attention|sdpa", re.I)
_HLO_LINE = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?)[\[{ ].*?metadata=\{([^}]*)\}")
CATEGORIES = ("gemm fp8", "gemm", "attention", "quantization", "optimizer", "other")


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Kernel-style name -> (result element type, op_name) of each instruction of an optimized HLO
    module, under its own name and its deduplicated/scheduling names ('.' written as '_')."""
    out = {}
    for line in hlo_text.splitlines():
        m = _HLO_LINE.match(line)
        if not m:
            continue
        name, dtype, meta = m.groups()
        op = re.search(r'op_name="([^"]*)"', meta)
        info = (dtype, op.group(1) if op else "")
        for alias in [name] + re.findall(r'(?:deduplicated|scheduling)_name="([^"]*)"', meta):
            out.setdefault(alias.replace(".", "_"), info)
    return out


def kernel_category(kernel: str, hlo: dict[str, tuple[str, str]]) -> str:
    """One of ``CATEGORIES``: GEMM library kernels by name (FP8 ones by their operand types);
    fusions by their HLO instruction: inside a quantized GEMM's custom_vjp (``_qdot``) but not
    a GEMM, or producing FP8 values -> quantization; under the ``optimizer`` name scope ->
    optimizer; attention by kernel name or op name."""
    dtype, op = hlo.get(kernel.replace(".", "_"), ("", ""))
    if _GEMM.search(kernel):
        return "gemm fp8" if _FP8_GEMM.search(kernel) else "gemm"
    if _ATTENTION.search(kernel) or "dot_product_attention" in op:
        return "attention"
    if "_qdot" in op or dtype.startswith("f8"):
        return "quantization"
    if "/optimizer/" in op or op.endswith("/optimizer"):
        return "optimizer"
    return "other"


def kernel_categories(kernels: dict[str, float], hlo_text: str) -> dict[str, float]:
    """Seconds per step of each of ``CATEGORIES`` (see ``kernel_category``)."""
    hlo = hlo_instructions(hlo_text)
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for name, seconds in kernels.items():
        totals[kernel_category(name, hlo)] += seconds
    return totals


_COPY_LINE = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\S* copy\(%([\w.\-]+)\)")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
          "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def hlo_copies(hlo_text: str) -> list[dict]:
    """Every ``copy`` instruction of an optimized HLO module, largest first: its name, shape,
    bytes and operand (a ``broadcast`` operand: a buffer initialized from one shared constant,
    e.g. a layer scan's stacked residuals starting as zeros)."""
    rows = []
    for line in hlo_text.splitlines():
        m = _COPY_LINE.match(line)
        if not m:
            continue
        name, dtype, dims, operand = m.groups()
        n = _BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
        rows.append({"name": name, "shape": f"{dtype}[{dims}]", "bytes": n, "operand": operand})
    return sorted(rows, key=lambda r: -r["bytes"])
