"""Image preprocessing as torchvision does it: per-channel normalization.

``Normalize(mean, std)(x)`` computes, for each channel ``c`` of an image batch laid out
``(..., C, H, W)``::

    out[..., c, :, :] = (x[..., c, :, :] - mean[c]) / std[c]

exactly as ``torchvision.transforms.Normalize``: ``mean`` and ``std`` are first converted
to the input's dtype, a ``std`` of zero (after that conversion) is an error, and a float
input is required (convert uint8 pixels to floats in [0, 1] first; the dataset loaders
already do).

>>> import numpy as np
>>> from dualnorm.data import Normalize
>>> x = np.full((2, 3, 4, 4), 0.5, np.float32)
>>> out = Normalize((0.5, 0.25, 0.0), (0.5, 0.5, 0.25))(x)
>>> out[0, :, 0, 0].tolist()
[0.0, 0.5, 2.0]
>>> Normalize((0.5,), (0.5,))
Normalize(mean=(0.5,), std=(0.5,))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dualnorm.errors import InputError

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "Normalize", "normalize"]

# The per-channel statistics of CIFAR-10's training images (in [0, 1]) that torchvision users pass.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _stats(name: str, values: Any) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"Normalize: {name} must be a number or a sequence of numbers (one per channel), got {values!r}",
            type_error=True,
        ) from None
    if arr.ndim > 1 or arr.size == 0:
        raise InputError(
            f"Normalize: {name} must be a number or a flat sequence of one number per channel, got {values!r}"
        )
    return arr.reshape(-1)


def normalize(
    x: Any, mean: Sequence[float] | float, std: Sequence[float] | float, inplace: bool = False
) -> Any:
    """``(x - mean[c]) / std[c]`` per channel of ``(..., C, H, W)`` input (NumPy or a backend's array).

    ``mean`` and ``std`` hold one value per channel (or one for all). With ``inplace`` a NumPy
    input is overwritten and returned; arrays that cannot be changed in place (MLX) come back new.
    """
    from dualnorm.backends import backend_of

    try:
        backend = backend_of(x)
    except InputError:
        raise InputError(
            f"Normalize takes an image array (NumPy or a dualnorm backend's), got {type(x).__name__}",
            type_error=True,
        ) from None
    np_dtype = np.dtype(backend.numpy_dtype(x.dtype))
    if not np.issubdtype(np_dtype, np.floating):
        raise InputError(
            f"Normalize: the input should be a float array, got {np_dtype}; "
            "convert pixels to floats first (e.g. uint8 / 255)",
            type_error=True,
        )
    if x.ndim < 3:
        raise InputError(
            f"Normalize expects an image array of shape (..., C, H, W), got shape {tuple(x.shape)}"
        )
    channels = x.shape[-3]
    mean_arr, std_arr = _stats("mean", mean), _stats("std", std)
    for name, arr in (("mean", mean_arr), ("std", std_arr)):
        if arr.size not in (1, channels):
            raise InputError(
                f"Normalize: {name} has {arr.size} values, but the input has {channels} channels "
                f"(shape {tuple(x.shape)}); give one value per channel, or one for all"
            )
    # As torchvision: the statistics are cast to the input's dtype before the zero check and the maths.
    mean_cast, std_cast = mean_arr.astype(np_dtype), std_arr.astype(np_dtype)
    if np.any(std_cast == 0):
        raise InputError(
            f"Normalize: std evaluated to zero after conversion to {np_dtype}, leading to division by zero "
            f"(std={std!r})"
        )
    shape = (-1, 1, 1)
    if isinstance(x, np.ndarray):
        out = x if inplace else x.copy()
        out -= mean_cast.reshape(shape)
        out /= std_cast.reshape(shape)
        return out
    m = backend.asarray(mean_cast.reshape(shape), x.dtype)
    s = backend.asarray(std_cast.reshape(shape), x.dtype)
    return (x - m) / s


class Normalize:
    """``transforms.Normalize(mean, std, inplace=False)``: a callable applying :func:`normalize`."""

    def __init__(
        self, mean: Sequence[float] | float, std: Sequence[float] | float, inplace: bool = False
    ) -> None:
        _stats("mean", mean)
        if np.any(_stats("std", std) == 0):
            raise InputError(f"Normalize: std must not contain zeros, got {std!r}")
        self.mean = mean
        self.std = std
        self.inplace = bool(inplace)

    def __call__(self, x: Any) -> Any:
        return normalize(x, self.mean, self.std, self.inplace)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"
