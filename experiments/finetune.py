"""Fine-tune a trained run: ``python -m experiments.finetune --config configs/lm.py:20m --workdir runs/ft \\
    --config.finetune.init_from=runs/20m --config.finetune.mode=qlora --config.data.include=shakespeare``.

From a Hugging Face Llama directory instead: ``--config.finetune.init_from_hf=models/llama`` (its
config.json sets the model; text tokenized with ``--config.data.tokenizer=models/llama``; docs/ptq.md).

The same loop as ``experiments.train`` (re-running resumes the fine-tune from its own checkpoint,
never from ``init_from`` again); at the end it prints the trainable parameter count, the memory
of a step beside full fine-tuning's, and the domain validation loss (and, with
``--config.finetune.eval_quantized=<format>``, the loss with the weights rounded to it).
Ctrl-C or SIGTERM saves a checkpoint and stops (exit status 130 or 143; STATUS says so).
Modes, formats and the order study: ``configs/lm.py`` and ``configs/finetune_order.py``.
"""

from absl import app, flags
from ml_collections import config_flags

from lowprec.train import distributed, loop

config_flags.DEFINE_config_file("config", None, "config file and variant, e.g. configs/lm.py:20m", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (created; resumed when it exists)")
flags.mark_flags_as_required(["config", "workdir"])

_ROWS = (("parameters", "trainable_bytes", "full_param_bytes"), ("frozen (base)", "frozen_bytes", None),
         ("optimizer state", "optimizer_bytes", "full_optimizer_bytes"), ("total", "total_bytes", "full_total_bytes"))


def summary(cfg, result: dict) -> str:
    """The fine-tune's numbers as a few aligned lines."""
    mem = result.get("memory") or {}
    start = cfg.finetune.init_from or cfg.finetune.get("init_from_hf") or "(random init)"
    lines = [f"fine-tune {cfg.finetune.mode} from {start}, "
             f"data {cfg.data.include or 'all'}: step {result['step']}"]
    if mem:
        share = mem["trainable_params"] / max(mem["full_params"], 1)
        lines.append(f"trainable parameters: {mem['trainable_params']:,} of {mem['full_params']:,} ({share:.2%})")
        lines.append(f"{'memory (bytes)':<18}{'this run':>16}{'full fine-tune':>16}")
        for name, mine, full in _ROWS:
            lines.append(f"{name:<18}{mem[mine]:>16,}" + (f"{mem[full]:>16,}" if full else f"{'-':>16}"))
        compiled = {k: v for k, v in mem.items() if k.startswith("compiled_")}
        if compiled:
            lines.append("compiled step, per device: " + ", ".join(f"{k[9:]}={v:,}" for k, v in compiled.items()))
    for key in ("val_loss", "val_quantized_loss"):
        if key in result:
            lines.append(f"{key}: {result[key]:.4f}")
    return "\n".join(lines)


def main(argv):
    del argv
    distributed.maybe_initialize()
    cfg = flags.FLAGS.config
    result = loop.train(cfg, flags.FLAGS.workdir)
    print(summary(cfg, result))
    return loop.exit_code(result)  # 143 / 130 after SIGTERM / SIGINT (checkpoint saved), as experiments.train


if __name__ == "__main__":
    import sys

    from lowprec.train import imports

    error = imports.from_argv(sys.argv)  # before the config file: its variant may name their recipes
    if error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    app.run(main)
