"""``lowprec.train`` exports the entry points users call, the same objects as at their old paths."""

import subprocess
import sys

import lowprec.train
from lowprec.train import build, finetune, finetune_modes, loop, restore

# Optional or heavy packages that lowprec.train's modules import lazily, where they are used.
HEAVY = ("tensorboardX", "matplotlib", "safetensors", "tokenizers", "transformers", "torch", "tensorflow",
         "hypothesis", "pandas")


def test_the_entry_points_are_the_modules_own():
    assert lowprec.train.train is loop.train
    assert lowprec.train.load_run is restore.load_run
    assert lowprec.train.read_config is restore.read_config
    assert lowprec.train.load_finetuned is finetune.load_finetuned
    assert sorted(lowprec.train.__all__) == ["load_finetuned", "load_run", "read_config", "train"]
    for name in lowprec.train.__all__:  # each appears in the package's docstring example
        assert f"train.{name}(" in lowprec.train.__doc__


def test_old_import_paths_still_work():
    for name in ("setup", "Setup", "build_model", "make_model", "make_optimizer", "make_mesh", "recipe_rules",
                 "load_corpus", "shard"):
        assert getattr(loop, name) is getattr(build, name), name
    for name in ("check", "DEFAULTS", "MODES", "ADAPTER_MODES", "qat_rules", "weight_only_recipe",
                 "adapt", "split", "trainable_filter"):
        assert getattr(finetune, name) is getattr(finetune_modes, name), name


def test_importing_the_package_imports_nothing_heavy():
    code = (f"import sys, lowprec.train; print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & "
            f"set({HEAVY!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import lowprec.train imported {out.stdout.strip()}"
