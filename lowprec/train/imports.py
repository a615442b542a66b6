"""The user modules a run config names in ``imports``, imported before anything is built.

``imports`` holds module names (``my_formats``, ``pkg.recipes``; importable from the working
directory or ``PYTHONPATH``) or paths of ``.py`` files, so that the formats, estimators and
recipes they register are known by name in every process of the run: the training process
(``loop.train``), each sweep child and SLURM or TPU job (they run ``experiments.train``), and
any process that reloads the run (``restore.read_config``). A comma-separated string is several
entries: ``--config.imports=my_formats,other.py``.

A relative ``.py`` path is relative to the working directory of the process that first reads
the config: ``from_config`` (the training process, before the config is checked) rewrites it as
an absolute path, so config.json records where the file was and a later process (an evaluation,
a fine-tuning run) finds it from any directory. Sweep children and SLURM jobs start in the
launcher's working directory, so they resolve a relative path as the launcher would. A module
name is looked up on ``sys.path`` of each process, which holds its working directory.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import traceback
import zlib

from lowprec.train.config_check import ConfigError

FIELD = "imports"


def specs(value) -> list[str]:
    """The entries of an ``imports`` value: a string (comma-separated) or a sequence of them."""
    items = [value] if isinstance(value, str) else list(value or ())
    if not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{FIELD} must be module names or .py paths (strings); got {value!r}")
    return [s.strip() for item in items for s in item.split(",") if s.strip()]


def load(value) -> list[str]:
    """Imports each entry of ``value`` (once per process) and returns the module names, in order.
    A failed import is one ``ConfigError`` line naming the field, the entry and the cause."""
    return [_import(spec) for spec in specs(value)]


def from_argv(argv: list[str]) -> str | None:
    """Imports the ``--config.imports=...`` modules of a command line (``experiments.train``,
    ``experiments.finetune``) before the config file is read, since its variant may name their
    recipes; the error line of a failed import, or None."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--config.{FIELD}=")]
    try:
        for value in values:
            load([v.strip("()[]'\" ") for v in value.split(",")])
    except ConfigError as e:
        return str(e)
    return None


def absolute(value) -> list[str]:
    """The entries of ``value`` with each ``.py`` path made absolute (against the working
    directory); module names as they are."""
    return [os.path.abspath(s) if _is_path(s) else s for s in specs(value)]


def from_config(cfg) -> list[str]:
    """``load(cfg.imports)``; a config without the field imports nothing. Rewrites the field's
    relative ``.py`` paths as absolute ones (``absolute``), so that what the run records names
    the files from any working directory."""
    value = cfg.get(FIELD, ())
    resolved = absolute(value)
    if resolved != specs(value):
        cfg[FIELD] = ",".join(resolved) if isinstance(value, str) else tuple(resolved)
    return load(resolved)


def _import(spec: str) -> str:
    try:
        if not _is_path(spec):
            return importlib.import_module(spec).__name__
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise ConfigError(f"{FIELD}: no file {spec!r} (a path is relative to the working directory "
                              f"{os.getcwd()!r})")
        return _import_file(path)
    except ConfigError:
        raise
    except BaseException as e:  # SystemExit and syntax errors of the user's file included
        raise ConfigError(f"{FIELD}: importing {spec!r} failed: {_cause(e)}") from None


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def _import_file(path: str) -> str:
    """The module of ``path``, named after the file (``my_formats.py``: ``my_formats``); a file
    already imported (by path or by name) is not run again."""
    name = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    loaded = sys.modules.get(name)
    if loaded is not None:
        if os.path.abspath(getattr(loaded, "__file__", "") or "") == path:
            return name
        name = f"{name}_{zlib.crc32(path.encode()):08x}"  # another module of that name: keep both
        if name in sys.modules:
            return name
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return name


def _cause(e: BaseException) -> str:
    """``Type: message (file:line)``, the line being the innermost frame of the user's code."""
    text = " ".join(str(e).split())
    where = ""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename and f.filename != __file__]
    if isinstance(e, SyntaxError) and e.filename:
        where = f" ({os.path.basename(e.filename)}:{e.lineno})"
    elif frames:
        where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"
    return f"{type(e).__name__}: {text}{where}"
