"""A progress bar with tokens/s, loss, step time and MFU; model FLOPs and device peaks."""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (FLOP/s) by device kind; MFU is quoted against these.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5p": 459e12,
             "TPU v5 lite": 197e12, "TPU v6 lite": 918e12}


def peak_flops(device) -> float | None:
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_BF16.items():
        if name.lower() in kind.lower():
            return peak
    return None


def model_flops_per_token(mcfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding parameters + LM head) plus attention's
    12 x layers x d_model x seq_len (forward and backward of QK^T and PV)."""
    embed = mcfg.vocab_size * mcfg.d_model
    dense = mcfg.num_params() - embed if not mcfg.tie_embeddings else mcfg.num_params()
    return 6.0 * dense + 12.0 * mcfg.n_layers * mcfg.d_model * seq_len


class Progress:
    """tqdm over steps (or log lines when disabled / not a terminal). While the bar is shown,
    log lines for the terminal are written above it (``tqdm.write``) instead of through it."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, disable=not enabled)
        self._redirected = _redirect_console() if enabled else []

    def update(self, step: int, values: dict) -> None:
        self.bar.n = step
        shown = {"loss": f"{values['loss']:.4f}", "tok/s": f"{values['tokens_per_s']:.3g}",
                 "step": f"{values['step_time_s'] * 1e3:.0f}ms"}
        if "mfu" in values:
            shown["mfu"] = f"{values['mfu']:.1%}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()
        log.info("step %d: %s", step, " ".join(f"{k}={v}" for k, v in shown.items()))

    def close(self) -> None:
        self.bar.close()
        for restore in reversed(self._redirected):
            restore()
        self._redirected = []


class _AboveBar:
    """A text stream whose lines tqdm writes above its bars (then redraws them)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if text:
            tqdm.write(text, file=self.stream, end="")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _redirect_console() -> list:
    """Points sys.stdout/stderr and the root logger's console handlers (absl's included) at
    ``_AboveBar`` streams; returns the undo functions."""
    undo, streams = [], {}
    for name in ("stdout", "stderr"):
        original = getattr(sys, name)
        if isinstance(original, _AboveBar):
            continue
        streams[id(original)] = wrapped = _AboveBar(original)
        setattr(sys, name, wrapped)
        undo.append(lambda name=name, original=original: setattr(sys, name, original))
    for handler in logging.getLogger().handlers:
        target = getattr(handler, "python_handler", handler)  # absl's ABSLHandler wraps a StreamHandler
        stream = getattr(target, "stream", None)
        if isinstance(target, logging.StreamHandler) and id(stream) in streams:
            target.stream = streams[id(stream)]
            undo.append(lambda target=target, stream=stream: setattr(target, "stream", stream))
    return undo
