"""The shared math of every normalization layer, written once for all backends.

Batch, layer, instance and group norm are one computation over different axes
(Ioffe & Szegedy 2015, Algorithm 1)::

    mu      = mean(x)                    over the normalized axes
    var     = mean((x - mu)^2)           biased, as in the paper and PyTorch
    x_hat   = (x - mu) / sqrt(var + eps)
    y       = gamma * x_hat + beta

and its backward, with m the number of normalized elements and g = dL/dx_hat::

    dL/dx = 1/sqrt(var + eps) * (g - mean(g) - x_hat * mean(g * x_hat))

Functions decorated with :func:`overridable` dispatch to a backend's faster version
when one is registered under the same name in ``backend.kernels``; the undecorated
reference stays reachable as ``fn.reference`` for parity tests.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dualnorm.backends.base import Backend

F = TypeVar("F", bound=Callable[..., Any])


def overridable(fn: F) -> F:
    """Let a backend replace ``fn`` by registering ``backend.kernels[fn.__name__]``."""
    name = fn.__name__

    @functools.wraps(fn)
    def dispatch(B: Backend, *args: Any, **kwargs: Any) -> Any:
        impl = B.kernels.get(name)
        return (impl or fn)(B, *args, **kwargs)

    dispatch.reference = fn  # type: ignore[attr-defined]
    return dispatch  # type: ignore[return-value]


def count(shape: Sequence[int], axes: Sequence[int]) -> int:
    return math.prod(shape[a] for a in axes)


def moments(B: Backend, x: Any, axes: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """Mean, biased variance and the centred input over ``axes`` (kept as size-1 dims).

    A corrected two-pass algorithm: the first mean may carry rounding error when the
    data sit far from zero (float32 inputs like 1e4 + noise); the mean of the
    centred data measures that error exactly and removes it. Never E[x^2] - E[x]^2.
    """
    xp = B.xp
    mean0 = xp.mean(x, axis=axes, keepdims=True)
    centred = x - mean0
    correction = xp.mean(centred, axis=axes, keepdims=True)
    var = xp.mean(centred * centred, axis=axes, keepdims=True) - correction * correction
    return mean0 + correction, xp.maximum(var, 0.0), centred - correction


@overridable
def normalize(B: Backend, x: Any, axes: tuple[int, ...], eps: float) -> tuple[Any, Any, Any, Any]:
    """x_hat = (x - mean) / sqrt(var + eps) over ``axes``; returns (x_hat, inv_std, mean, var)."""
    mean, var, centred = moments(B, x, axes)
    inv_std = B.rsqrt(var + eps)
    return centred * inv_std, inv_std, mean, var


@overridable
def normalize_backward(B: Backend, grad_xhat: Any, x_hat: Any, inv_std: Any, axes: tuple[int, ...]) -> Any:
    """dL/dx from dL/dx_hat when the statistics were computed from x itself."""
    xp = B.xp
    mean_g = xp.mean(grad_xhat, axis=axes, keepdims=True)
    mean_gx = xp.mean(grad_xhat * x_hat, axis=axes, keepdims=True)
    return inv_std * (grad_xhat - mean_g - x_hat * mean_gx)


def affine_backward(
    B: Backend,
    grad_y: Any,
    x_hat: Any,
    weight: Any | None,
    reduce_axes: tuple[int, ...],
    param_shape: tuple[int, ...],
) -> tuple[Any, Any, Any]:
    """For y = weight * x_hat + bias: returns (dL/dx_hat, dL/dweight, dL/dbias).

    ``reduce_axes`` are the axes the parameters are broadcast over; the parameter
    gradients are reshaped to ``param_shape``.
    """
    xp = B.xp
    grad_w = xp.sum(grad_y * x_hat, axis=reduce_axes).reshape(param_shape)
    grad_b = xp.sum(grad_y, axis=reduce_axes).reshape(param_shape)
    grad_xhat = grad_y if weight is None else grad_y * weight
    return grad_xhat, grad_w, grad_b


def channel_shape(ndim: int, channels: int) -> tuple[int, ...]:
    """Broadcast shape of a per-channel vector for channels-first input: (1, C, 1, 1...)."""
    return (1, channels) + (1,) * (ndim - 2)


def batch_axes(ndim: int) -> tuple[int, ...]:
    """Axes batch norm reduces over for channels-first input: batch and spatial."""
    return (0, *range(2, ndim))
