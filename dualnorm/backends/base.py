"""The backend interface: the one place where NumPy and MLX differ.

Layer math is written once against ``backend.xp``, the array namespace (``numpy`` or
``mlx.core``), using only functions that exist with the same meaning in both (the *xp
contract*): ``sum mean max min sqrt exp log tanh abs maximum minimum where clip pad
cumsum reshape transpose zeros ones concatenate stack array arange`` and the arithmetic
and comparison operators, indexing, ``.shape .dtype .reshape .astype .T``. Everything
else that differs lives here as a method, so a newcomer finds every backend-specific
line in ``<name>_backend.py``.

A backend is one file: ``dualnorm/backends/<name>_backend.py`` defines a ``Backend``
subclass and calls ``register_backend(name, TheClass)``; ``get_backend(name)`` imports
that module the first time the name is asked for. Its fast paths live in the modules
that :meth:`Backend.kernel_modules` names (by default ``kernels_<name>.py``).

A backend may also register faster versions of named hot operations in
``kernels`` (see :func:`dualnorm.nn.functional.overridable`); parity tests pin every
override to the shared reference implementation.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from dualnorm.errors import InputError


class Backend(abc.ABC):
    """An array library that dualnorm can run on."""

    name: str
    xp: Any  # the array namespace
    float32: Any
    float64: Any
    int64: Any
    kernels: dict[str, Callable[..., Any]]
    #: arrays are computed only when asked (``eval``): the training loop evaluates once per step
    lazy: ClassVar[bool] = False
    #: every device this backend knows; ``available_devices()`` says which exist here
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, device: str | None = None) -> None:
        self.kernels = {}
        self.warm_ups: list[Any] = []  # the kernel modules with a warm_up(), see warm_up()
        self._eps_of: dict[Any, float] = {}
        self.device = self.default_device() if device is None else device

    # --- identity and devices ----------------------------------------------------
    @classmethod
    def available_devices(cls) -> tuple[str, ...]:
        """The devices of ``devices`` that exist on this machine."""
        return cls.devices

    @classmethod
    def default_device(cls) -> str:
        return cls.available_devices()[0]

    @classmethod
    def device_hint(cls, device: str) -> str:
        """What to do when ``device`` is known but absent here."""
        return ""

    @classmethod
    def kernel_modules(cls) -> tuple[str, ...]:
        """Modules whose ``KERNELS`` tables hold this backend's fast paths, preferred first."""
        return (f"dualnorm.backends.kernels_{cls.name}",)

    @property
    def key(self) -> str:
        """``name:device``, the cache key of this instance."""
        return f"{self.name}:{self.device}"

    @property
    def label(self) -> str:
        """What people call it: ``numpy``, ``mlx-cpu``, ``mlx-gpu``."""
        return self.name if len(self.devices) == 1 else f"{self.name}-{self.device}"

    def check(self) -> None:
        """Run one op: a wheel for the wrong platform may import and still fail here."""
        with self.on_device():
            self.eval(self.xp.sum(self.xp.ones((2,))))

    def _check_dtype(self, dtype: Any) -> None:  # noqa: B027 (every dtype is fine by default)
        """Raise :class:`BackendError` if ``dtype`` cannot be computed on this device."""

    # --- arrays in and out -------------------------------------------------------
    # The native array class, when there is one: ``type(x) is B.array_type`` is the layers' check
    # for the common case (is_array, a method call, costs more than a small layer's bookkeeping).
    array_type: type | None = None

    @abc.abstractmethod
    def is_array(self, value: Any) -> bool:
        """True if ``value`` is this backend's native array type."""

    @abc.abstractmethod
    def _from_numpy(self, array: np.ndarray, dtype: Any) -> Any:
        """Convert a NumPy array to a native array of ``dtype`` (a backend dtype)."""

    @abc.abstractmethod
    def to_numpy(self, array: Any) -> np.ndarray:
        """A NumPy copy (or view) of a native or NumPy array."""

    def asarray(self, value: Any, dtype: Any = None, *, what: str = "input") -> Any:
        """Convert NumPy arrays, lists, scalars or native arrays to a native array.

        Integers and floats are accepted (and cast to ``dtype`` when given); bools,
        complex numbers, strings and objects raise :class:`InputError` (a TypeError).
        """
        if self.is_array(value):
            kind = self.dtype_kind(value.dtype)
            if kind not in "iuf":
                raise InputError(
                    f"{what} has dtype {value.dtype}; expected a real floating-point or integer "
                    "array. Convert it first, e.g. x.astype(float32).",
                    type_error=True,
                )
            if dtype is not None and value.dtype != dtype:
                return value.astype(dtype)
            return value
        try:
            host = np.asarray(value)
        except Exception as exc:  # e.g. a ragged list
            raise InputError(f"{what} could not be read as an array: {exc}", type_error=True) from None
        if host.dtype.kind not in "iuf":
            raise InputError(
                f"{what} has dtype {host.dtype}; expected a real floating-point or integer array "
                "(bool, complex, string and object arrays are not normalized). Convert it first, "
                "e.g. np.asarray(x, dtype=np.float32).",
                type_error=True,
            )
        if dtype is None:
            if host.dtype.kind in "iu" and isinstance(value, np.ndarray):
                # Integer arrays stay integer (class labels), as the NumPy backend keeps them.
                dtype = self.int64
            else:
                dtype = self.float64 if host.dtype == np.float64 else self.float32
        return self._from_numpy(host, dtype)

    @abc.abstractmethod
    def dtype_kind(self, dtype: Any) -> str:
        """NumPy-style kind letter: 'f' float, 'i' signed, 'u' unsigned, 'b' bool, 'c' complex."""

    def numpy_dtype(self, dtype: Any) -> np.dtype:
        return np.dtype(str(dtype).rsplit(".", 1)[-1])

    def dtype(self, name: str | None) -> Any:
        """Backend dtype from a name ("float32"/"float64"); None means float32."""
        if name is None:
            return self.float32
        table = {"float32": self.float32, "float64": self.float64}
        key = str(name).rsplit(".", 1)[-1]
        if key not in table:
            raise InputError(f"dtype {name!r} is not supported; use 'float32' or 'float64'")
        self._check_dtype(table[key])
        return table[key]

    def eps(self, dtype: Any) -> float:
        """Machine epsilon of a floating dtype (RMSNorm's default eps, as in PyTorch)."""
        eps = self._eps_of.get(dtype)
        if eps is None:  # (np.finfo costs ~1 µs: RMSNorm asks on every call)
            eps = self._eps_of[dtype] = float(np.finfo(self.numpy_dtype(dtype)).eps)
        return eps

    # --- evaluation --------------------------------------------------------------
    def eval(self, *arrays: Any) -> None:  # noqa: B027 (NumPy is eager: nothing to do)
        """Force lazy arrays to be computed (MLX); a no-op on eager backends."""

    def item(self, array: Any) -> float:
        return float(self.to_numpy(array))

    def on_device(self) -> contextlib.AbstractContextManager[Any]:
        """Run the block's operations on this backend's device (MLX); nothing to do elsewhere."""
        return contextlib.nullcontext()

    def compute(self) -> contextlib.AbstractContextManager[Any]:
        """The context a training step runs in: on this device, floating-point warnings off.

        Overflow on the way to a NaN is reported as divergence by the training loop, not
        as warnings.
        """
        return self.on_device()

    def start_warm_up(self) -> None:
        """Start loading, in the background, what makes the kernels fast (numba's compiled kernels
        on NumPy): each installed kernel module's ``start_warm_up()``. Changes nothing until
        :meth:`warm_up`."""
        for module in self.warm_ups:
            if hasattr(module, "start_warm_up"):
                module.start_warm_up()

    def warm_up(self) -> None:
        """Finish loading (or load) what makes the kernels fast, and use it from here on: each
        installed kernel module's ``warm_up()``. Training runs call it at one fixed point (after
        their first record), so a run's numbers never depend on when the loading ended."""
        for module in self.warm_ups:
            module.warm_up()

    def make_default(self) -> None:  # noqa: B027 (only MLX has a process-wide device to set)
        """Called by ``set_backend``: make this device the process default where that exists."""

    # --- helpers the optimizers, initializers, data and collectives need ----------
    def zeros_like(self, array: Any) -> Any:
        return self.xp.zeros(tuple(array.shape), dtype=array.dtype)

    def from_host(self, host: np.ndarray, dtype: Any) -> Any:
        """A native array of ``dtype`` from a NumPy array (no input checks: trusted data)."""
        return self._from_numpy(np.asarray(host), dtype)

    def indices(self, host: np.ndarray) -> Any:
        """Integer indices (a NumPy array) in the form this backend's ``array[idx]`` takes."""
        return self._from_numpy(np.asarray(host, dtype=np.int64), self.int64)

    def copy_into(self, out: Any, array: Any) -> Any:
        """``array`` copied into ``out`` where arrays are mutable; else a fresh copy."""
        return array + 0

    # --- ops that differ between array libraries ---------------------------------
    def add_strided(self, out: Any, value: Any, starts: tuple[int, ...], steps: tuple[int, ...]) -> Any:
        """``out`` with ``value`` added at every ``steps``-th place of its trailing dims from ``starts``.

        That is ``out[..., s0 : : k0, s1 : : k1] += value`` (the slices as long as ``value``); the
        pooling backward's slice-add. In place where arrays are mutable (NumPy); this default
        only uses the xp contract: ``value`` is spread out with zeros, shifted by padding, and added.
        """
        xp = self.xp
        lead = out.ndim - len(starts)
        for k, (start, step) in enumerate(zip(starts, steps, strict=True)):
            axis = lead + k
            count = value.shape[axis]
            if step > 1:  # interleave step-1 zeros after each entry
                spread = value.reshape(*value.shape[: axis + 1], 1, *value.shape[axis + 1 :])
                widths = [(0, 0)] * spread.ndim
                widths[axis + 1] = (0, step - 1)
                spread = xp.pad(spread, widths)
                value = spread.reshape(*value.shape[:axis], count * step, *value.shape[axis + 1 :])
            length = out.shape[axis]
            widths = [(0, 0)] * value.ndim
            widths[axis] = (start, max(0, length - start - value.shape[axis]))
            value = xp.pad(value, widths)
            if value.shape[axis] > length:
                cut = [slice(None)] * value.ndim
                cut[axis] = slice(0, length)
                value = value[tuple(cut)]
        return out + value

    def rsqrt(self, x: Any) -> Any:
        return 1.0 / self.xp.sqrt(x)

    def sigmoid(self, x: Any) -> Any:
        xp = self.xp
        # exp of a negative number never overflows; both branches are exact.
        e = xp.exp(-xp.abs(x))
        return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    def logsumexp(self, x: Any, axis: int) -> Any:
        xp = self.xp
        m = xp.max(x, axis=axis, keepdims=True)
        return m + xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True))

    def all_finite(self, x: Any) -> bool:
        return bool(np.isfinite(self.to_numpy(x)).all())

    def full(self, shape: tuple[int, ...], value: float, dtype: Any) -> Any:
        return self._from_numpy(np.full(shape, value, dtype=self.numpy_dtype(dtype)), dtype)

    def __repr__(self) -> str:
        if self.label == self.name:
            return f"<dualnorm backend {self.name!r}>"
        return f"<dualnorm backend {self.name!r} device={self.device!r}>"
