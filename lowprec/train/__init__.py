"""Training runs, and loading them back: the entry points.

    from configs import lm
    from lowprec import train

    result = train.train(lm.get_config("smoke"), "runs/smoke")   # trains (or resumes) runs/smoke
    cfg = train.read_config("runs/smoke")                         # its config.json (upgraded), imports done
    run = train.load_run("runs/smoke")                            # config, model, params, step
    logits = run.model(tokens_BxT)
    tuned = train.load_finetuned("runs/smoke-lora")               # a fine-tune, adapters merged

The package's modules form a one-way chain, each importing only modules below it:

    loop      train(): run directory, resume checks, signals; a run's phases
    finetune  starting from finetune.init_from, eval_quantized, load_finetuned
    restore   read_config, load_run
    build     from a run config: mesh, model and its recipes, optimizer, initial state, corpus
    below     config_check, finetune_modes (the finetune block), run_recipes, imports, step,
              sharding, checkpoint, rundir, metrics, telemetry, progress, distributed, fields
    schema    every config field: defaults, docs, checks, upgrade of older config.json files

(``tests/train/test_layering.py`` checks it.) The old paths (``lowprec.train.loop.train``,
``lowprec.train.restore.load_run``, ``lowprec.train.finetune.load_finetuned``) still import.
"""

from lowprec.train.finetune import load_finetuned
from lowprec.train.loop import train
from lowprec.train.restore import load_run, read_config

__all__ = ["load_finetuned", "load_run", "read_config", "train"]
