"""Where and how to run many: sweep expansion (``launch.sweep``), the local runner
(``launch.runner``), SLURM scripts (``launch.slurm``) and TPU VM commands (``launch.tpu``)."""
