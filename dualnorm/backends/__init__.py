"""Choosing the array backend and device: NumPy everywhere, MLX on Apple Silicon (or Linux).

The active backend is chosen, in order, by ``use_backend(...)`` (this thread, inside
the ``with``), ``set_backend(...)`` (process-wide), the ``DUALNORM_BACKEND``
environment variable, and automatically: MLX on Apple Silicon when it imports and
works, NumPy everywhere else. A backend with several devices (MLX: ``"cpu"``,
``"gpu"``) takes ``device=``; without it the device of the active backend of the same
name is kept, then ``DUALNORM_DEVICE``, then the backend's default (MLX: the GPU where
there is one). ``"mlx-cpu"`` / ``"mlx-gpu"`` name a backend and a device at once.

Backends are found by convention: ``get_backend("foo")`` imports
``dualnorm.backends.foo_backend``, which calls :func:`register_backend`; a test or a
plug-in may register one directly.

>>> import dualnorm
>>> dualnorm.set_backend("numpy").name
'numpy'
>>> dualnorm.get_backend().name
'numpy'
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from dualnorm.backends.base import Backend
from dualnorm.errors import BackendError, InputError

#: the built-in backends, each in ``<name>_backend.py`` beside this file
BACKEND_NAMES = ("numpy", "mlx")
ENV_VAR = "DUALNORM_BACKEND"
DEVICE_ENV_VAR = "DUALNORM_DEVICE"
_INSTALL_HINT = {
    "numpy": 'pip install "dualnorm"',
    "mlx": 'pip install "dualnorm[mlx]"  (installs mlx on Apple Silicon, mlx[cpu] on Linux)',
}

_registry: dict[str, Callable[..., Backend]] = {}
_instances: dict[str, Backend] = {}  # by Backend.key, "name:device"
_failures: dict[str, str] = {}  # by name (import failed) or key (the device failed)
_lock = threading.RLock()  # re-entrant: importing a backend module registers it under the lock
_process_default: str | None = None  # a Backend.key
_thread_local = threading.local()


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Make ``factory`` (a :class:`Backend` subclass, called with ``device=``) the backend ``name``."""
    key = str(name).strip().lower()
    with _lock:
        _registry[key] = factory
        _failures.pop(key, None)
        for cached in [k for k in _instances if k.split(":")[0] == key]:
            del _instances[cached]


def backend_names() -> tuple[str, ...]:
    """The built-in backend names, then those registered since."""
    return BACKEND_NAMES + tuple(n for n in _registry if n not in BACKEND_NAMES)


def _unknown(name: Any) -> BackendError:
    return BackendError(
        f"unknown backend {name!r}; choose one of: {', '.join(backend_names())} "
        f"(set by set_backend(), use_backend() or the {ENV_VAR} environment variable)"
    )


def _split(name: str) -> tuple[str, str | None]:
    """``"mlx-gpu"`` or ``"mlx:gpu"`` -> ("mlx", "gpu"); ``"numpy"`` -> ("numpy", None)."""
    key = str(name).strip().lower()
    if key in backend_names():
        return key, None
    base, _, device = key.rpartition(":" if ":" in key else "-")
    if base in backend_names():
        return base, device
    raise _unknown(name)


def _backend_class(name: str) -> Callable[..., Backend]:
    """The registered factory of ``name``, importing ``<name>_backend.py`` the first time."""
    with _lock:
        if name in _registry:
            return _registry[name]
        if name in _failures:
            raise BackendError(_failures[name])
        module = f"dualnorm.backends.{name}_backend"
        try:
            loaded = importlib.import_module(module)
        except Exception as exc:
            _failures[name] = _not_available(name, exc)
            raise BackendError(_failures[name]) from None
        if name not in _registry:  # imported before the registry was reset: find its class
            for value in vars(loaded).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, Backend)
                    and value.__dict__.get("name") == name
                ):
                    _registry[name] = value
        if name not in _registry:
            raise BackendError(
                f"{module} did not register a backend called {name!r}; "
                f"end it with register_backend({name!r}, YourBackend)"
            )
        return _registry[name]


def _not_available(name: str, exc: BaseException) -> str:
    hint = _INSTALL_HINT.get(name, f"install the array library behind {name!r}")
    return f"backend {name!r} is not available here ({type(exc).__name__}: {exc}). Install it with: {hint}"


def _create(name: str, device: str) -> Backend:
    backend = _backend_class(name)(device=device)
    backend.check()
    return backend


def _active_key() -> str | None:
    """The key chosen explicitly (thread, process, environment), without the automatic choice."""
    key = getattr(_thread_local, "name", None) or _process_default
    if key is None and os.environ.get(ENV_VAR, "").strip():
        key = _resolve(os.environ[ENV_VAR], inherit=False).key
    return key


def _choose_device(name: str, cls: Any, device: str | None, inherit: bool = True) -> str:
    known = tuple(getattr(cls, "devices", ("cpu",)))
    source = "device"
    if device is None:
        if len(known) == 1:
            return known[0]
        active = None
        if inherit:
            with contextlib.suppress(BackendError):  # a bad DUALNORM_BACKEND is reported where it is used
                active = _active_key()
        if active is not None and active.split(":")[0] == name:
            return active.split(":", 1)[1]
        env = os.environ.get(DEVICE_ENV_VAR, "").strip().lower()
        if env and len(known) > 1:  # a one-device backend (NumPy) ignores it
            device, source = env, f"device (from {DEVICE_ENV_VAR})"
        else:
            return cls.default_device()
    d = str(device).strip().lower()
    here = tuple(cls.available_devices())
    if d not in known:
        raise BackendError(
            f"unknown {source} {device!r} for backend {name!r}; choose one of: {', '.join(here)} "
            "(available on this machine)"
        )
    if d not in here:
        hint = cls.device_hint(d) if hasattr(cls, "device_hint") else ""
        raise BackendError(
            f"backend {name!r} has no {d} device on this machine; available here: {', '.join(here)}. {hint}"
        )
    return d


def _resolve(name: str | Backend, device: str | None = None, *, inherit: bool = True) -> Backend:
    if isinstance(name, Backend):
        if device is None or device == name.device:
            return name
        name = name.name
    base, named_device = _split(name)
    if device is not None and named_device is not None and device != named_device:
        raise BackendError(f"backend {name!r} names device {named_device!r} but device={device!r} was given")
    with _lock:
        cls = _backend_class(base)
        chosen = _choose_device(base, cls, device if device is not None else named_device, inherit)
        key = f"{base}:{chosen}"
        if key in _instances:
            return _instances[key]
        if key in _failures:
            raise BackendError(_failures[key])
        try:
            backend = _create(base, chosen)
        except Exception as exc:
            _failures[key] = _not_available(base, exc)
            raise BackendError(_failures[key]) from None
        _load_kernels(backend)  # before caching it: a bad DUALNORM_KERNELS raises on every call
        _instances[key] = backend
        return backend


def _load_kernels(backend: Backend) -> None:
    """Install a backend's fast paths: the ``KERNELS`` tables of its ``kernel_modules()``.

    Loaded least preferred first, so a preferred module's kernels win where two define one.
    ``DUALNORM_KERNELS`` chooses: ``reference`` keeps the shared reference math everywhere;
    for NumPy, ``numba`` (the default when numba is installed; an error when it is not) or ``numpy``.
    """
    choice = os.environ.get("DUALNORM_KERNELS", "").strip().lower()
    if choice not in ("", "numba", "numpy", "reference"):
        raise BackendError(
            f"DUALNORM_KERNELS={choice!r} is not a kernel choice; use numba, numpy or reference (or unset it)"
        )
    if choice == "reference":
        return
    modules = list(type(backend).kernel_modules())
    if backend.name == "numpy" and choice != "numpy":
        from dualnorm.backends import kernels_numba

        if kernels_numba.available():
            modules.insert(0, "dualnorm.backends.kernels_numba")
        elif choice == "numba":
            raise BackendError(
                'DUALNORM_KERNELS=numba, but numba is not installed. Install it with: pip install "dualnorm[fast]", '
                "or set DUALNORM_KERNELS=numpy"
            )
    for name in reversed(modules):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        backend.kernels.update(module.KERNELS)
        if hasattr(module, "warm_up"):
            backend.warm_ups.append(module)


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
    for name in backend_names():
        try:
            _backend_class(name)
            _resolve(name, _backend_class(name).available_devices()[0])
        except BackendError:
            continue
        names.append(name)
    return names


def available_devices(name: str) -> tuple[str, ...]:
    """The devices of backend ``name`` on this machine (raises BackendError if it is not installed)."""
    base, _ = _split(name)
    return tuple(_backend_class(base).available_devices())


def available_labels() -> list[str]:
    """Every backend and device usable here, as compare and bench name them: numpy, mlx-cpu, mlx-gpu."""
    labels = []
    for name in available_backends():
        cls = _backend_class(name)
        for device in cls.available_devices():
            try:
                labels.append(_resolve(name, device).label)
            except BackendError:
                continue
    return labels


def get_backend(name: str | None = None, device: str | None = None) -> Backend:
    """The backend called ``name`` (on ``device``), or the active one when ``name`` is None."""
    if name is not None:
        return _resolve(name, device)
    key = _active_key()
    if key is None:
        key = _auto_name()
    return _resolve(key, device)


def set_backend(name: str | Backend, device: str | None = None) -> Backend:
    """Make ``name`` (on ``device``) the process-wide backend for new layers; returns it."""
    global _process_default
    backend = _resolve(name, device)
    backend.make_default()
    _process_default = backend.key
    return backend


@contextlib.contextmanager
def use_backend(name: str | Backend, device: str | None = None) -> Iterator[Backend]:
    """Use ``name`` (on ``device``) inside the ``with`` block, on this thread only."""
    backend = _resolve(name, device)
    previous = getattr(_thread_local, "name", None)
    _thread_local.name = backend.key
    try:
        with backend.on_device():
            yield backend
    finally:
        _thread_local.name = previous


def backend_of(array: Any) -> Backend:
    """The backend whose native array ``array`` is (the active backend first, if it claims it)."""
    with contextlib.suppress(BackendError):
        key = _active_key()
        active = _instances.get(key) if key is not None else None
        if active is not None and active.is_array(array):
            return active
    if isinstance(array, np.ndarray):
        return _resolve("numpy")
    for backend in list(_instances.values()):
        if backend.is_array(array):
            return backend
    root = type(array).__module__.split(".")[0]
    if root in backend_names():
        backend = _resolve(root)
        if backend.is_array(array):
            return backend
    raise InputError(
        f"expected an array of one of the backends ({', '.join(backend_names())}), got a "
        f"{type(array).__name__}; convert it with backend.asarray(...)",
        type_error=True,
    )


def use_device_everywhere(backend: str | None, device: str | None) -> Backend | None:
    """Make (``backend``, ``device``) the default of this process and of the processes it starts.

    What ``--device`` does on the command line. Without ``backend``: the active backend if it
    has that device, else the first available one that does. Raises :class:`BackendError`.
    """
    if device is None:
        return None
    name = backend
    if name is None:
        name = get_backend().name
        wanted = str(device).strip().lower()
        if wanted not in type(get_backend(name)).devices:
            name = next((b for b in available_backends() if wanted in type(get_backend(b)).devices), name)
    chosen = set_backend(name, device=device)
    os.environ[DEVICE_ENV_VAR] = chosen.device  # training children (the UI's runner, compare) inherit it
    return chosen


def to_numpy(array: Any) -> np.ndarray:
    """A NumPy array from a NumPy or MLX array (or anything array-like)."""
    if isinstance(array, np.ndarray):
        return array
    try:
        backend = backend_of(array)
    except (InputError, BackendError):
        return np.asarray(array)
    return backend.to_numpy(array)


__all__ = [
    "BACKEND_NAMES",
    "DEVICE_ENV_VAR",
    "Backend",
    "available_backends",
    "available_devices",
    "available_labels",
    "backend_names",
    "backend_of",
    "get_backend",
    "register_backend",
    "set_backend",
    "to_numpy",
    "use_backend",
    "use_device_everywhere",
]
