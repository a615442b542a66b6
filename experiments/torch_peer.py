"""Peer rows for benchmark_gemm: a torch nn.Linear (bf16, no bias) forward+backward, plain and
converted by torchao's ``convert_to_float8_training`` (tensorwise and rowwise), under torch.compile.

torch and torchao are imported only when these rows run. A row that cannot run here (torch or
torchao missing, no CUDA where float8 needs it, torch without the GPU JAX uses) comes back with a
``skipped`` reason, logged, never as a silent fallback to another path.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import time

import numpy as np

logger = logging.getLogger(__name__)

# label -> torchao float8 recipe name (None: plain bf16, the baseline of the torch rows' ratios)
RECIPES = {"torch bf16": None, "torchao float8 tensorwise": "tensorwise", "torchao float8 rowwise": "rowwise"}
_MIN_FP8_CAPABILITY = (8, 9)


def versions() -> dict:
    """torch, torchao and CUDA versions, None where not installed (nothing is imported for torchao)."""
    out = {"torch": None, "torchao": None, "torch_cuda": None}
    if importlib.util.find_spec("torch") is not None:
        import torch

        out["torch"], out["torch_cuda"] = torch.__version__, torch.version.cuda
    if importlib.util.find_spec("torchao") is not None:
        from importlib.metadata import version

        out["torchao"] = version("torchao")
    return out


def unavailable(float8_recipe: str | None, jax_platform: str) -> str | None:
    """Why a row of this float8 recipe (None: torch bf16) cannot run here, or None if it can.

    torch runs on the device JAX benchmarks on: a GPU run with torch lacking CUDA is a skip, not
    a CPU measurement beside GPU ones."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    cuda = torch.cuda.is_available()
    if jax_platform == "gpu" and not cuda:
        return f"JAX runs on a GPU but torch {torch.__version__} sees no CUDA device"
    if float8_recipe is None:
        return None
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (install its wheel: see benchmark_gemm's docstring)"
    if not cuda:
        return "torchao float8 training needs a CUDA GPU; torch.cuda.is_available() is False"
    capability = torch.cuda.get_device_capability()
    if capability < _MIN_FP8_CAPABILITY:
        return f"torchao float8 needs compute capability >= {_MIN_FP8_CAPABILITY}; this GPU has {capability}"
    return None


def make_step(float8_recipe: str | None, tokens: int, d_in: int, d_out: int, device: str):
    """A compiled forward+backward (y, dx, dW) of one bf16 nn.Linear without bias on random data."""
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Linear(d_in, d_out, bias=False, device=device, dtype=torch.bfloat16)
    if float8_recipe is not None:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        layer = convert_to_float8_training(layer, config=Float8LinearConfig.from_recipe_name(float8_recipe))
    compiled = torch.compile(layer)
    x = torch.randn(tokens, d_in, device=device, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(tokens, d_out, device=device, dtype=torch.bfloat16)

    def step():
        y = compiled(x)
        dx, dw = torch.autograd.grad(y, (x, layer.weight), dy)  # no .grad accumulation between steps
        return y, dx, dw

    return step, type(layer).__name__


def time_step(step, device: str, warmup: int = 3, repeats: int = 20) -> tuple[float, str]:
    """(median seconds of ``step()``, timer): CUDA events around each step on a GPU, else wall time."""
    import torch

    cuda = device == "cuda"
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), "cuda events" if cuda else "wall clock"


def fresh_start(device: str) -> int:
    """Drops compiled graphs and tensors of earlier rows (torch.compile would otherwise pile up
    recompilations of Linear.forward up to its cache limit and then run eagerly); returns the
    bytes torch still holds on the GPU (0 on CPU), the zero of this row's peak."""
    import torch

    gc.collect()
    torch._dynamo.reset()
    if device != "cuda":
        return 0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return int(torch.cuda.memory_allocated())


def peak_memory(step, device: str, held_before: int) -> dict:
    """Peak bytes torch allocated for the row: weights, inputs, outputs and the temporaries of one step."""
    import torch

    if device != "cuda":
        return {"method": "none: torch reports peak memory on CUDA only", "peak_bytes": None}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = step()
    torch.cuda.synchronize()
    del out
    return {"method": "torch.cuda.max_memory_allocated after reset_peak_memory_stats",
            "peak_bytes": int(torch.cuda.max_memory_allocated()) - held_before}


def run_row(label: str, shape_name: str, shape, repeats: int, jax_platform: str) -> dict:
    """One torch row: time, peak memory and versions, or the reason it was skipped or failed."""
    recipe = RECIPES[label]
    tokens, d_in, d_out = shape
    row = {"shape": shape_name, "recipe": label, "framework": "torch", "float8_recipe": recipe,
           "baseline": "torch bf16", **versions()}
    reason = unavailable(recipe, jax_platform)
    if reason is not None:
        logger.warning("%s %s: skipped: %s", shape_name, label, reason)
        return {**row, "skipped": reason}
    import torch

    device = "cuda" if torch.cuda.is_available() and jax_platform == "gpu" else "cpu"
    try:
        held = fresh_start(device)
        t0 = time.perf_counter()
        step, module = make_step(recipe, tokens, d_in, d_out, device)
        step()  # compiles forward and backward
        t1 = time.perf_counter()
        seconds, timer = time_step(step, device, repeats=repeats)
        memory = peak_memory(step, device, held)
    except Exception as e:  # noqa: BLE001 - e.g. a float8 kernel this GPU lacks: recorded, the rest still run
        print(f"{shape_name} {label}: failed: {type(e).__name__}: {str(e)[:400]}", flush=True)
        return {**row, "error": f"{type(e).__name__}: {e}"}
    print(f"{shape_name} {label}: {seconds * 1e3:.3f} ms (set up and compiled in {t1 - t0:.1f} s)", flush=True)
    return {**row, "module": module, "device": device, "timer": timer, "seconds": seconds,
            "tflops": 3 * 2 * tokens * d_in * d_out / seconds / 1e12, "memory": memory}


def run_shape(shape_name: str, shape, repeats: int, jax_platform: str) -> list[dict]:
    """The torch rows of one shape, with ratios to the torch bf16 row where it ran."""
    rows = [run_row(label, shape_name, shape, repeats, jax_platform) for label in RECIPES]
    base = rows[0].get("seconds")
    for row in rows:
        if base and "seconds" in row:
            row["time_vs_bf16"], row["speedup_vs_bf16"] = row["seconds"] / base, base / row["seconds"]
    return rows
