"""MLX backend: Apple Silicon (Metal), CUDA (``mlx[cuda13]``), or the CPU build on Linux (``mlx[cpu]``).

MLX arrays are lazy and belong to the stream of the thread that created them:
keep all MLX work of one run on one thread, and call :meth:`eval` once per step.

Devices: ``"gpu"`` where MLX has one (the default there), else ``"cpu"``. MLX arrays are
not tied to a device; each operation runs on the default stream of the *current* device.
So the device is bound per block: ``use_backend`` and every training step enter
``mx.stream(device)`` (MLX keeps that per thread), and ``set_backend`` also sets MLX's
process default (``mx.set_default_device``) for work outside those blocks.

MLX has no float64 on the GPU: asking for a float64 array or layer on ``mlx-gpu`` raises
:class:`~dualnorm.errors.BackendError` saying to use float32 or the CPU device, rather
than failing later inside MLX.
"""

from __future__ import annotations

import contextlib
from typing import Any

import mlx.core as mx
import numpy as np

from dualnorm.backends import register_backend
from dualnorm.backends.base import Backend
from dualnorm.errors import BackendError

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


_MX_DEVICES = {"cpu": mx.cpu, "gpu": mx.gpu}


class MLXBackend(Backend):
    name = "mlx"
    xp = mx
    float32 = mx.float32
    float64 = mx.float64
    int64 = mx.int64
    array_type = mx.array
    lazy = True
    devices = ("cpu", "gpu")

    @classmethod
    def available_devices(cls) -> tuple[str, ...]:
        return tuple(d for d in cls.devices if mx.is_available(_MX_DEVICES[d]))

    @classmethod
    def default_device(cls) -> str:
        return "gpu" if "gpu" in cls.available_devices() else "cpu"

    @classmethod
    def device_hint(cls, device: str) -> str:
        return (
            "MLX reaches a GPU through Metal on Apple Silicon, or through CUDA on Linux with "
            'pip install "mlx[cuda13]"; the mlx[cpu] build has the CPU only.'
        )

    def on_device(self) -> contextlib.AbstractContextManager[Any]:
        return mx.stream(_MX_DEVICES[self.device])

    def make_default(self) -> None:
        mx.set_default_device(_MX_DEVICES[self.device])

    def _check_dtype(self, dtype: Any) -> None:
        if dtype == mx.float64 and self.device == "gpu":
            raise BackendError(
                "MLX has no float64 on the GPU. Use float32 (the default), or run float64 on the CPU: "
                'dualnorm.set_backend("mlx", device="cpu"), use_backend("mlx", device="cpu"), '
                "DUALNORM_DEVICE=cpu or --device cpu."
            )

    def indices(self, host: np.ndarray) -> mx.array:
        return mx.array(np.asarray(host).astype(np.int32))

    def is_array(self, value: Any) -> bool:
        return isinstance(value, mx.array)

    def _from_numpy(self, array: np.ndarray, dtype: Any) -> mx.array:
        self._check_dtype(dtype)
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

    def add_strided(self, out: Any, value: Any, starts: tuple[int, ...], steps: tuple[int, ...]) -> Any:
        lead = out.ndim - len(starts)
        index = [slice(None)] * lead + [
            slice(start, start + (value.shape[lead + k] - 1) * step + 1, step)
            for k, (start, step) in enumerate(zip(starts, steps, strict=True))
        ]
        return out.at[tuple(index)].add(value)

    def rsqrt(self, x: Any) -> Any:
        return mx.rsqrt(x)

    def sigmoid(self, x: Any) -> Any:
        return mx.sigmoid(x)

    def logsumexp(self, x: Any, axis: int) -> Any:
        return mx.logsumexp(x, axis=axis, keepdims=True)

    def all_finite(self, x: Any) -> bool:
        return bool(mx.all(mx.isfinite(x)).item())


register_backend("mlx", MLXBackend)
