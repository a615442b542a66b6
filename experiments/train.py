"""Train a model from a config: ``python -m experiments.train --config configs/lm.py:smoke --workdir runs/smoke``.

Re-running with the same workdir resumes from its latest checkpoint. Overrides:
``--config.train.steps=100 --config.recipe=fp8``.
"""

from absl import app, flags
from ml_collections import config_flags

from lowprec.train import distributed, loop

config_flags.DEFINE_config_file("config", None, "config file and variant, e.g. configs/lm.py:smoke",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (created; resumed when it exists)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    distributed.maybe_initialize()
    loop.train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
