"""Find an experiment by name: built-in, from a file (``path/to/file.py:Name``), or installed.

Installed packages register experiments under the entry-point group ``dualnorm.experiments``::

    [project.entry-points."dualnorm.experiments"]
    my-exp = "my_package.experiments:MyExperiment"

The entry point (and the ``Name`` of a file spec) may be an :class:`Experiment` subclass
(instantiated without arguments) or an instance.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from dualnorm.errors import DualnormError
from dualnorm.experiments.base import Experiment

ENTRY_POINT_GROUP = "dualnorm.experiments"


class ExperimentLoadError(DualnormError, ValueError):
    """A user experiment could not be found or loaded; ``details`` holds its traceback, if any."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def entry_points() -> dict[str, Any]:
    """The installed ``dualnorm.experiments`` entry points by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def is_file_spec(spec: str) -> bool:
    path, sep, _ = spec.rpartition(":")
    return bool(sep) and path.endswith(".py")


def _instance(obj: Any, where: str) -> Experiment:
    if isinstance(obj, type) and issubclass(obj, Experiment):
        try:
            obj = obj()
        except Exception as exc:
            raise ExperimentLoadError(
                f"{where}: creating the experiment failed: {type(exc).__name__}: {exc}",
                traceback.format_exc(),
            ) from None
    if not isinstance(obj, Experiment):
        raise ExperimentLoadError(
            f"{where} is a {type(obj).__name__}, expected a dualnorm.experiments.Experiment subclass "
            "(see dualnorm/experiments/base.py)"
        )
    missing = [a for a in ("name", "title", "summary", "variants") if not hasattr(obj, a)]
    if missing:
        raise ExperimentLoadError(f"{where}: the experiment does not set {', '.join(missing)}")
    return obj


def load_file_experiment(spec: str) -> Experiment:
    """``path/to/file.py:Name``: import the file (as a fresh module) and take ``Name`` from it."""
    file, _, attr = spec.rpartition(":")
    path = Path(file).expanduser()
    if not path.is_file():
        raise ExperimentLoadError(f"{spec}: no such file {path}; expected path/to/file.py:ClassName")
    if not attr.isidentifier():
        raise ExperimentLoadError(
            f"{spec}: {attr!r} is not a Python name; expected path/to/file.py:ClassName"
        )
    module_name = f"dualnorm_user_{abs(hash(str(path.resolve())))}_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:  # pragma: no cover (a .py file always has one)
        raise ExperimentLoadError(f"{spec}: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ExperimentLoadError(
            f"{spec}: importing {path} failed: {type(exc).__name__}: {exc}", traceback.format_exc()
        ) from None
    if not hasattr(module, attr):
        found = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, Experiment) and v is not Experiment
        )
        raise ExperimentLoadError(
            f"{spec}: {path} has no {attr!r}; experiments defined there: {', '.join(found) or '(none)'}"
        )
    return _instance(getattr(module, attr), spec)


def load_experiment(spec: str) -> Experiment:
    """A built-in experiment, a file spec ``path.py:Name``, or an installed entry point."""
    from dualnorm.experiments import EXPERIMENTS

    if spec in EXPERIMENTS:
        return EXPERIMENTS[spec]
    if is_file_spec(spec):
        return load_file_experiment(spec)
    eps = entry_points()
    if spec in eps:
        try:
            obj = eps[spec].load()
        except Exception as exc:
            raise ExperimentLoadError(
                f"{spec}: loading the entry point {eps[spec].value} failed: {type(exc).__name__}: {exc}",
                traceback.format_exc(),
            ) from None
        return _instance(obj, f"{spec} ({eps[spec].value})")
    names = [*EXPERIMENTS, *sorted(eps)]
    raise ExperimentLoadError(
        f"invalid choice: unknown experiment {spec!r}; choose one of: {', '.join(repr(n) for n in names)}, "
        "or give your own as path/to/file.py:ClassName"
    )


__all__ = ["ENTRY_POINT_GROUP", "ExperimentLoadError", "entry_points", "is_file_spec", "load_experiment"]
