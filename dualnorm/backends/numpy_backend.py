"""NumPy backend: runs everywhere, eager, float32 by default (float64 for checks)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from dualnorm._quiet import quiet_floats
from dualnorm.backends import register_backend
from dualnorm.backends.base import Backend


class NumPyBackend(Backend):
    name = "numpy"
    xp = np
    float32 = np.dtype(np.float32)
    float64 = np.dtype(np.float64)
    int64 = np.dtype(np.int64)
    array_type = np.ndarray

    def is_array(self, value: Any) -> bool:
        return isinstance(value, np.ndarray)

    def _from_numpy(self, array: np.ndarray, dtype: Any) -> np.ndarray:
        return np.asarray(array, dtype=dtype)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def dtype_kind(self, dtype: Any) -> str:
        return np.dtype(dtype).kind

    def numpy_dtype(self, dtype: Any) -> np.dtype:
        return np.dtype(dtype)

    def all_finite(self, x: Any) -> bool:
        return bool(np.isfinite(x).all())

    def compute(self) -> contextlib.AbstractContextManager[Any]:
        return quiet_floats(all="ignore")  # the layers called inside skip their own errstate

    def zeros_like(self, array: Any) -> np.ndarray:
        return np.zeros_like(array)

    def indices(self, host: np.ndarray) -> np.ndarray:
        return host

    def add_strided(self, out: Any, value: Any, starts: tuple[int, ...], steps: tuple[int, ...]) -> Any:
        lead = out.ndim - len(starts)
        index = [slice(None)] * lead + [
            slice(start, start + (value.shape[lead + k] - 1) * step + 1, step)
            for k, (start, step) in enumerate(zip(starts, steps, strict=True))
        ]
        out[tuple(index)] += value
        return out

    def copy_into(self, out: Any, array: Any) -> Any:
        np.copyto(out, array)
        return out


register_backend("numpy", NumPyBackend)
