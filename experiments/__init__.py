"""Entry points: the demo/main job, training, evaluation and benchmarks (`python -m experiments.<name>`)."""
