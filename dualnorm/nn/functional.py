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


# --- whole-layer computations (backends may fuse these; see dualnorm/backends/kernels_*.py) ---
#
# Each pair below is one layer's training forward and its backward. The forward returns
# an opaque ``ctx`` that only the matching backward reads: a backend that registers a
# fast forward registers its backward too, and may keep something cheaper than x_hat
# (e.g. the input and the statistics) in ``ctx``.


@overridable
def batch_norm_train(
    B: Backend, x: Any, weight: Any | None, bias: Any | None, eps: float
) -> tuple[Any, Any, Any, Any]:
    """Algorithm 1 on channels-first ``x``: returns (y, mean, var, ctx).

    ``mean`` and ``var`` (biased) have shape (C,), for the running estimates.
    """
    axes = batch_axes(x.ndim)
    shape = channel_shape(x.ndim, x.shape[1])
    x_hat, inv_std, mean, var = normalize(B, x, axes, eps)
    y = x_hat if weight is None else x_hat * weight.reshape(shape) + bias.reshape(shape)
    return y, mean.reshape(-1), var.reshape(-1), (x_hat, inv_std)


@overridable
def batch_norm_train_backward(B: Backend, grad_y: Any, ctx: Any, weight: Any | None) -> tuple[Any, Any, Any]:
    """Backward of :func:`batch_norm_train`: returns (dL/dx, dL/dweight, dL/dbias)."""
    x_hat, inv_std = ctx
    axes = batch_axes(x_hat.ndim)
    channels = x_hat.shape[1]
    w = None if weight is None else weight.reshape(channel_shape(x_hat.ndim, channels))
    grad_xhat, grad_w, grad_b = affine_backward(B, grad_y, x_hat, w, axes, (channels,))
    return normalize_backward(B, grad_xhat, x_hat, inv_std, axes), grad_w, grad_b


@overridable
def layer_norm(
    B: Backend, x: Any, weight: Any | None, bias: Any | None, axes: tuple[int, ...], eps: float
) -> tuple[Any, Any]:
    """Layer norm over the trailing ``axes``; weight/bias have the trailing shape. Returns (y, ctx)."""
    x_hat, inv_std, _, _ = normalize(B, x, axes, eps)
    y = x_hat
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y, (x_hat, inv_std)


@overridable
def layer_norm_backward(
    B: Backend, grad_y: Any, ctx: Any, weight: Any | None, axes: tuple[int, ...]
) -> tuple[Any, Any, Any]:
    """Backward of :func:`layer_norm`: returns (dL/dx, dL/dweight, dL/dbias) (None-free)."""
    x_hat, inv_std = ctx
    lead = tuple(range(grad_y.ndim - len(axes)))
    trailing = tuple(x_hat.shape[a] for a in axes)
    grad_xhat, grad_w, grad_b = affine_backward(B, grad_y, x_hat, weight, lead, trailing)
    return normalize_backward(B, grad_xhat, x_hat, inv_std, axes), grad_w, grad_b


@overridable
def group_norm(
    B: Backend, x: Any, num_groups: int, weight: Any | None, bias: Any | None, eps: float
) -> tuple[Any, Any]:
    """Group norm of (N, C, *) ``x`` over contiguous channel groups. Returns (y, ctx)."""
    n = x.shape[0]
    x_hat_g, inv_std, _, _ = normalize(B, x.reshape(n, num_groups, -1), (2,), eps)
    x_hat = x_hat_g.reshape(x.shape)
    if weight is None:
        return x_hat, (x_hat, inv_std, num_groups)
    shape = channel_shape(x.ndim, x.shape[1])
    return x_hat * weight.reshape(shape) + bias.reshape(shape), (x_hat, inv_std, num_groups)


@overridable
def group_norm_backward(B: Backend, grad_y: Any, ctx: Any, weight: Any | None) -> tuple[Any, Any, Any]:
    """Backward of :func:`group_norm`: returns (dL/dx, dL/dweight, dL/dbias)."""
    x_hat, inv_std, num_groups = ctx
    n, channels = x_hat.shape[0], x_hat.shape[1]
    w = None if weight is None else weight.reshape(channel_shape(x_hat.ndim, channels))
    grad_xhat, grad_w, grad_b = affine_backward(B, grad_y, x_hat, w, batch_axes(x_hat.ndim), (channels,))
    grad_in = normalize_backward(
        B, grad_xhat.reshape(n, num_groups, -1), x_hat.reshape(n, num_groups, -1), inv_std, (2,)
    )
    return grad_in.reshape(x_hat.shape), grad_w, grad_b


@overridable
def rms_norm(B: Backend, x: Any, weight: Any | None, axes: tuple[int, ...], eps: float) -> tuple[Any, Any]:
    """RMS norm over the trailing ``axes``: y = x / sqrt(mean(x^2) + eps) * weight. Returns (y, ctx)."""
    xp = B.xp
    inv_rms = B.rsqrt(xp.mean(x * x, axis=axes, keepdims=True) + eps)
    x_hat = x * inv_rms
    return (x_hat if weight is None else x_hat * weight), (x_hat, inv_rms)


@overridable
def rms_norm_backward(
    B: Backend, grad_y: Any, ctx: Any, weight: Any | None, axes: tuple[int, ...]
) -> tuple[Any, Any]:
    """Backward of :func:`rms_norm`: returns (dL/dx, dL/dweight)."""
    x_hat, inv_rms = ctx
    lead = tuple(range(grad_y.ndim - len(axes)))
    trailing = tuple(x_hat.shape[a] for a in axes)
    grad_xhat, grad_w, _ = affine_backward(B, grad_y, x_hat, weight, lead, trailing)
    # normalize_backward without the mean term (nothing was subtracted)
    mean_gx = B.xp.mean(grad_xhat * x_hat, axis=axes, keepdims=True)
    return inv_rms * (grad_xhat - x_hat * mean_gx), grad_w
