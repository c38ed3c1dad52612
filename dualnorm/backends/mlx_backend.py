"""MLX backend: Apple Silicon (Metal), or the CPU build on Linux (``mlx[cpu]``).

MLX arrays are lazy and belong to the stream of the thread that created them:
keep all MLX work of one run on one thread, and call :meth:`eval` once per step.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np

from dualnorm.backends.base import Backend

_KINDS = {
    mx.bool_: "b",
    mx.uint8: "u",
    mx.uint16: "u",
    mx.uint32: "u",
    mx.uint64: "u",
    mx.int8: "i",
    mx.int16: "i",
    mx.int32: "i",
    mx.int64: "i",
    mx.float16: "f",
    mx.bfloat16: "f",
    mx.float32: "f",
    mx.float64: "f",
    mx.complex64: "c",
}


class MLXBackend(Backend):
    name = "mlx"
    xp = mx
    float32 = mx.float32
    float64 = mx.float64
    int64 = mx.int64

    def is_array(self, value: Any) -> bool:
        return isinstance(value, mx.array)

    def _from_numpy(self, array: np.ndarray, dtype: Any) -> mx.array:
        # mx.array(ndarray) silently turns float64 into float32: always pass the dtype.
        if any(stride < 0 for stride in array.strides):
            # MLX cannot read negative strides (x[:, ::-1], as flip augmentation makes).
            array = np.ascontiguousarray(array)
        return mx.array(array, dtype=dtype)

    def to_numpy(self, array: Any) -> np.ndarray:
        if not isinstance(array, mx.array):
            return np.asarray(array)
        if array.dtype == mx.bfloat16:  # NumPy has no bfloat16
            array = array.astype(mx.float32)
        # A copy: a view would let NumPy code write into an (immutable) MLX array.
        return np.array(array, copy=True)

    def dtype_kind(self, dtype: Any) -> str:
        return _KINDS.get(dtype, "?")

    def numpy_dtype(self, dtype: Any) -> np.dtype:
        if dtype == mx.bfloat16:
            return np.dtype(np.float32)
        return np.dtype(str(dtype).rsplit(".", 1)[-1])

    def eval(self, *arrays: Any) -> None:
        mx.eval(*arrays)

    def rsqrt(self, x: Any) -> Any:
        return mx.rsqrt(x)

    def sigmoid(self, x: Any) -> Any:
        return mx.sigmoid(x)

    def logsumexp(self, x: Any, axis: int) -> Any:
        return mx.logsumexp(x, axis=axis, keepdims=True)

    def all_finite(self, x: Any) -> bool:
        return bool(mx.all(mx.isfinite(x)).item())
