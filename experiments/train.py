"""Train a model from a config: ``python -m experiments.train --config configs/lm.py:smoke --workdir runs/smoke``.

Re-running with the same workdir resumes from its latest checkpoint, under the same config
(a changed one is refused, listing the changed fields, unless ``--resume_override``, which the
run's config_history.jsonl records). Overrides: ``--config.train.steps=100 --config.recipe=fp8``;
a misspelled field or an impossible value is one line of error before anything starts.
Ctrl-C or SIGTERM saves a checkpoint and stops (exit status 130 or 143; STATUS says so).
``--config.imports=my_formats`` (a module, a .py path, or several: ``'("a", "b.py")'``) is
imported first, so the formats and recipes it registers are usable by name. ``--help``: the flags;
``--helpconfig`` (with ``--config``): every config field, its default for that variant and its meaning.
``--library_logs`` shows orbax's and other libraries' INFO lines (default: warnings only).
"""

import difflib
import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from lowprec.train import distributed, fields, loop
from lowprec.train.config_check import ConfigError

config_flags.DEFINE_config_file("config", None, "config file and variant, e.g. configs/lm.py:smoke",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (created; resumed when it exists)")
flags.DEFINE_bool("resume_override", False, "resume the workdir's run even where this config differs from its "
                  "config.json (recorded in config_history.jsonl)")
flags.DEFINE_bool("library_logs", False, "log libraries' (orbax's, absl's, jax's) INFO lines too")
flags.DEFINE_bool("helpconfig", False, "print every field of --config's variant with its default and meaning, "
                  "then exit (no training, no workdir)")
flags.mark_flags_as_required(["config", "workdir"])


def config_spec(argv: list[str]) -> str | None:
    """The ``--config`` argument of ``argv`` (``configs/lm.py:smoke``), or None."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
        spec = argv[argv.index("--config") + 1]
    return spec


def help_config(argv: list[str]) -> int:
    """``--helpconfig``: prints every field of the ``--config`` file's variant with its value and
    meaning (``lowprec.train.fields``); nothing is trained, no workdir made. The exit status."""
    spec = config_spec(argv)
    error = pre_import(argv)
    if error is None and not spec:
        error = "--helpconfig: give --config, e.g. --config configs/lm.py:smoke --helpconfig"
    if error is None:
        path, _, arg = spec.partition(":")
        if not os.path.isfile(path):
            error = f"--config {spec!r}: no file {path!r}"
        else:
            try:
                cfg = fields.load_config_file(path, arg or None)
            except ValueError as e:
                error = str(e)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(fields.help_text(cfg, f"fields of --config {spec} (default values; override with "
                                f"--config.<field>=<value>):"))
    return 0


def unknown_override(argv: list[str]) -> str | None:
    """The error line for the first ``--config.<path>`` of ``argv`` that the config lacks
    (its closest match and the fields there), or None."""
    spec = config_spec(argv)
    paths = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if not spec or not paths:
        return None
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        return f"--config {spec!r}: no file {path!r}"
    cfg = fields.load_config_file(path, arg or None)
    for full in paths:
        node, parts = cfg, full.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(parts[:i])
                keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                close = difflib.get_close_matches(part, keys, n=1)
                hint = f"; did you mean {'.'.join([*parts[:i], close[0]])!r}" if close else ""
                known = f"fields of {where or 'the config'}: {', '.join(keys)}" if keys else (
                    f"{where} is a value, not a group")
                return f"--config.{full}: unknown config field {full!r}{hint}; {known}"
            node = node[part]
    return None


def main(argv):
    del argv
    distributed.maybe_initialize()
    try:
        result = loop.train(flags.FLAGS.config, flags.FLAGS.workdir, resume_override=flags.FLAGS.resume_override,
                            library_logs=flags.FLAGS.library_logs)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return loop.exit_code(result)


def pre_import(argv: list[str]) -> str | None:
    """Imports the ``--config.imports`` modules of ``argv`` before the config file is read (its
    variant may name their recipes); the error line of a failed import, or None."""
    from lowprec.train import imports

    return imports.from_argv(argv)


def run(argv: list[str]) -> None:
    """Checks ``argv``'s config overrides and flags (one line of error each), then trains."""
    if any(a in ("--helpconfig", "--helpconfig=true", "--helpconfig=True") for a in argv[1:]):
        sys.exit(help_config(argv))
    if any(a in ("--help", "-h", "-help", "--helpshort") for a in argv[1:]):
        print(__doc__ + "\nflags:\n" + flags.FLAGS.module_help(sys.modules[__name__]))
        sys.exit(0)
    error = pre_import(argv) or unknown_override(argv)
    if error is None:
        try:
            flags.FLAGS(argv)
        except Exception as e:  # config_flags' errors for bad values come as tracebacks otherwise
            lines = [line for line in str(e).replace("\\n", "\n").splitlines() if line.strip()]
            error = f"{type(e).__name__}: {' '.join(lines[-2:]) or e}"
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    app.run(main, argv, flags_parser=lambda parsed: parsed[:1])  # flags parsed above


if __name__ == "__main__":
    run(sys.argv)
