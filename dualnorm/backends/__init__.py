"""Choosing the array backend: NumPy everywhere, MLX on Apple Silicon (or Linux CPU).

The active backend is chosen, in order, by ``use_backend(...)`` (this thread, inside
the ``with``), ``set_backend(...)`` (process-wide), the ``DUALNORM_BACKEND``
environment variable, and automatically: MLX on Apple Silicon when it imports and
works, NumPy everywhere else.

>>> import dualnorm
>>> dualnorm.set_backend("numpy").name
'numpy'
>>> dualnorm.get_backend().name
'numpy'
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from dualnorm.backends.base import Backend
from dualnorm.errors import BackendError

BACKEND_NAMES = ("numpy", "mlx")
ENV_VAR = "DUALNORM_BACKEND"
_INSTALL_HINT = {
    "numpy": 'pip install "dualnorm"',
    "mlx": 'pip install "dualnorm[mlx]"  (installs mlx on Apple Silicon, mlx[cpu] on Linux)',
}

_instances: dict[str, Backend] = {}
_failures: dict[str, str] = {}
_lock = threading.Lock()
_process_default: str | None = None
_thread_local = threading.local()


def _create(name: str) -> Backend:
    if name == "numpy":
        from dualnorm.backends.numpy_backend import NumPyBackend

        return NumPyBackend()
    from dualnorm.backends.mlx_backend import MLXBackend

    backend = MLXBackend()
    # Importing is not enough (a wheel for the wrong platform imports, then fails): run an op.
    backend.eval(backend.xp.sum(backend.xp.ones((2,))))
    return backend


def _resolve(name: str) -> Backend:
    key = str(name).strip().lower()
    if key not in BACKEND_NAMES:
        raise BackendError(
            f"unknown backend {name!r}; choose one of: {', '.join(BACKEND_NAMES)} "
            f"(set by set_backend(), use_backend() or the {ENV_VAR} environment variable)"
        )
    with _lock:
        if key in _instances:
            return _instances[key]
        if key in _failures:
            raise BackendError(_failures[key])
        try:
            backend = _create(key)
        except Exception as exc:
            _failures[key] = (
                f"backend {key!r} is not available here ({type(exc).__name__}: {exc}). "
                f"Install it with: {_INSTALL_HINT[key]}"
            )
            raise BackendError(_failures[key]) from None
        _load_kernels(backend)  # before caching it: a bad DUALNORM_KERNELS raises on every call
        _instances[key] = backend
        return backend


def _load_kernels(backend: Backend) -> None:
    """Install a backend's fast paths, the ``KERNELS`` table of ``kernels_<name>.py``, if any.

    ``DUALNORM_KERNELS`` chooses: ``reference`` keeps the shared reference math everywhere;
    for NumPy, ``numba`` (the default when numba is installed) or ``numpy``.
    """
    import importlib

    choice = os.environ.get("DUALNORM_KERNELS", "").strip().lower()
    if choice not in ("", "numba", "numpy", "reference"):
        raise BackendError(
            f"DUALNORM_KERNELS={choice!r} is not a kernel choice; use numba, numpy or reference (or unset it)"
        )
    if choice == "reference":
        return
    name = backend.name
    if name == "numpy" and choice != "numpy":
        from dualnorm.backends import kernels_numba

        if kernels_numba.available():
            name = "numba"
        elif choice == "numba":
            raise BackendError(
                'DUALNORM_KERNELS=numba, but numba is not installed. Install it with: pip install "dualnorm[fast]", '
                "or set DUALNORM_KERNELS=numpy"
            )
    try:
        module = importlib.import_module(f"dualnorm.backends.kernels_{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"dualnorm.backends.kernels_{name}":
            raise
        return
    backend.kernels.update(module.KERNELS)


def _auto_name() -> str:
    if sys.platform == "darwin" and platform.machine() == "arm64":
        try:
            _resolve("mlx")
            return "mlx"
        except BackendError:
            pass
    return "numpy"


def available_backends() -> list[str]:
    """Names of the backends that import and run on this machine."""
    names = []
    for name in BACKEND_NAMES:
        try:
            _resolve(name)
        except BackendError:
            continue
        names.append(name)
    return names


def get_backend(name: str | None = None) -> Backend:
    """The backend called ``name``, or the active one when ``name`` is None."""
    if name is not None:
        return _resolve(name)
    override = getattr(_thread_local, "name", None)
    if override is not None:
        return _resolve(override)
    if _process_default is not None:
        return _resolve(_process_default)
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _resolve(env)
    return _resolve(_auto_name())


def set_backend(name: str) -> Backend:
    """Make ``name`` the process-wide backend for new layers; returns it."""
    global _process_default
    backend = _resolve(name)
    _process_default = backend.name
    return backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Use ``name`` for new layers inside the ``with`` block, on this thread only."""
    backend = _resolve(name)
    previous = getattr(_thread_local, "name", None)
    _thread_local.name = backend.name
    try:
        yield backend
    finally:
        _thread_local.name = previous


def to_numpy(array: Any) -> np.ndarray:
    """A NumPy array from a NumPy or MLX array (or anything array-like)."""
    if isinstance(array, np.ndarray):
        return array
    if "mlx" in _instances and _instances["mlx"].is_array(array):
        return _instances["mlx"].to_numpy(array)
    if type(array).__module__.startswith("mlx"):
        return _resolve("mlx").to_numpy(array)
    return np.asarray(array)


__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "available_backends",
    "get_backend",
    "set_backend",
    "to_numpy",
    "use_backend",
]
