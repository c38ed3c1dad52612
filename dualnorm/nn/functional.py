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

import numpy as np

from dualnorm.backends.base import Backend
from dualnorm.errors import InputError
from dualnorm.stats import merge_moments

F = TypeVar("F", bound=Callable[..., Any])


OVERRIDABLE: set[str] = set()  # names a backend's kernels may replace


def overridable(fn: F) -> F:
    """Let a backend replace ``fn`` by registering ``backend.kernels[fn.__name__]``."""
    name = fn.__name__
    OVERRIDABLE.add(name)

    @functools.wraps(fn)
    def dispatch(B: Backend, *args: Any, **kwargs: Any) -> Any:
        impl = B.kernels.get(name)
        return (impl or fn)(B, *args, **kwargs)

    dispatch.reference = fn  # type: ignore[attr-defined]
    return dispatch  # type: ignore[return-value]


def kernels_in(namespace: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    """A kernel module's ``KERNELS`` table: its functions named as the overridable ones they replace."""
    return {name: fn for name, fn in namespace.items() if name in OVERRIDABLE and callable(fn)}


def count(shape: Sequence[int], axes: Sequence[int]) -> int:
    return math.prod(shape[a] for a in axes)


# --- sums that stay accurate on long rows ----------------------------------------------------
#
# A float32 reduction that adds element after element drifts on long rows (MLX's CPU
# reductions: var of 9.4M uniform values off by 1%; NumPy over non-contiguous axes). NumPy
# accumulates in float64; MLX has no float64 on a GPU, so it sums blocks of SUM_BLOCK
# elements and then the blocks' sums (pairwise in SUM_BLOCK-wide steps), all in float32:
# each level's rounding error is that of a short sum.

SUM_BLOCK = 128
SHORT_SUM = 4096  # a float32 sum of at most this many elements is accurate as it is


def _blocked_sum(xp: Any, x: Any, axis: int) -> Any:
    """Sum over one ``axis`` (kept) in blocks of SUM_BLOCK, then sums of block sums."""
    n = x.shape[axis]
    while n > SUM_BLOCK:
        pad = -n % SUM_BLOCK
        if pad:  # zeros do not change a sum
            widths = [(0, 0)] * x.ndim
            widths[axis] = (0, pad)
            x = xp.pad(x, widths)
        blocks = (n + pad) // SUM_BLOCK
        x = xp.sum(x.reshape((*x.shape[:axis], blocks, SUM_BLOCK, *x.shape[axis + 1 :])), axis=axis + 1)
        n = blocks
    return xp.sum(x, axis=axis, keepdims=True)


def accurate_sum(B: Backend, x: Any, axes: tuple[int, ...]) -> Any:
    """Sum over ``axes`` (kept as size-1 dims) in ``x``'s dtype, accurate at any length."""
    xp = B.xp
    if getattr(xp, "__name__", "") == "numpy":
        trailing = sorted(a % x.ndim for a in axes) == list(range(x.ndim - len(axes), x.ndim))
        if trailing and x.flags.c_contiguous:  # one contiguous run per row: NumPy sums it pairwise
            return xp.sum(x, axis=axes, keepdims=True)
        return xp.sum(x, axis=axes, keepdims=True, dtype="float64").astype(x.dtype, copy=False)
    if count(x.shape, axes) <= SHORT_SUM:
        return xp.sum(x, axis=axes, keepdims=True)
    for axis in sorted((a % x.ndim for a in axes), reverse=True):
        x = _blocked_sum(xp, x, axis)
    return x


def accurate_mean(B: Backend, x: Any, axes: tuple[int, ...]) -> Any:
    """Mean over ``axes`` (kept), accurate at any length (see :func:`accurate_sum`)."""
    n = count(x.shape, axes)
    return accurate_sum(B, x, axes) * (1.0 / n)


def two_pass_moments(B: Backend, x: Any, axes: tuple[int, ...]) -> tuple[Any, Any, Any, Any]:
    """(mean0, correction, biased variance, x - mean0) over ``axes`` (kept as size-1 dims).

    A corrected two-pass algorithm: the first mean may carry rounding error when the
    data sit far from zero (float32 inputs like 1e4 + noise); the mean of the
    centred data measures that error exactly and removes it. Never E[x^2] - E[x]^2.
    The mean is ``mean0 + correction``; centre as ``(x - mean0) - correction``, since
    their float32 sum would round the correction away. ``B`` needs only ``xp``, so the
    compiled MLX kernels call this too.
    """
    mean0 = accurate_mean(B, x, axes)
    centred = x - mean0
    correction = accurate_mean(B, centred, axes)
    var = _var_of(B.xp, accurate_mean(B, centred * centred, axes), correction)
    return mean0, correction, var, centred


def moments(B: Backend, x: Any, axes: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """Mean, biased variance and the centred input over ``axes`` (kept as size-1 dims)."""
    mean0, correction, var, centred = two_pass_moments(B, x, axes)
    return _mean_of(B.xp, mean0, correction), var, centred - correction


def _mean_of(xp: Any, mean0: Any, correction: Any) -> Any:
    """mean0 + correction; mean0 where the correction is NaN (an inf in the data: the mean is
    +-inf, as PyTorch's running_mean shows, not NaN)."""
    return xp.where(xp.isnan(correction), mean0, mean0 + correction)


def _var_of(xp: Any, mean_sq: Any, correction: Any) -> Any:
    """mean((x - mean0)^2) - correction^2, never below 0; where both terms overflow (|x| ~ 1e30
    in float32) the variance is inf, as in PyTorch (x_hat is then 0), not inf - inf = NaN."""
    var = mean_sq - correction * correction
    return xp.where(xp.isnan(var), mean_sq, xp.maximum(var, 0.0))


@overridable
def normalize(B: Backend, x: Any, axes: tuple[int, ...], eps: float) -> tuple[Any, Any, Any, Any]:
    """x_hat = (x - mean) / sqrt(var + eps) over ``axes``; returns (x_hat, inv_std, mean, var)."""
    mean, var, centred = moments(B, x, axes)
    inv_std = B.rsqrt(var + eps)
    return centred * inv_std, inv_std, mean, var


@overridable
def normalize_backward(B: Backend, grad_xhat: Any, x_hat: Any, inv_std: Any, axes: tuple[int, ...]) -> Any:
    """dL/dx from dL/dx_hat when the statistics were computed from x itself."""
    mean_g = accurate_mean(B, grad_xhat, axes)
    mean_gx = accurate_mean(B, grad_xhat * x_hat, axes)
    return normalize_backward_from_means(grad_xhat, x_hat, inv_std, mean_g, mean_gx)


def normalize_backward_from_means(grad_xhat: Any, x_hat: Any, inv_std: Any, mean_g: Any, mean_gx: Any) -> Any:
    """dL/dx given mean(g) and mean(g * x_hat) over the normalized elements (local or global)."""
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
    grad_w = accurate_sum(B, grad_y * x_hat, reduce_axes).reshape(param_shape)
    grad_b = accurate_sum(B, grad_y, reduce_axes).reshape(param_shape)
    grad_xhat = grad_y if weight is None else grad_y * weight
    return grad_xhat, grad_w, grad_b


def channel_affine(x_hat: Any, weight: Any | None, bias: Any | None) -> Any:
    """y = x_hat * weight + bias with per-channel (C,) parameters, each part only when given."""
    shape = channel_shape(x_hat.ndim, x_hat.shape[1])
    y = x_hat if weight is None else x_hat * weight.reshape(shape)
    return y if bias is None else y + bias.reshape(shape)


def channel_affine_backward(B: Backend, grad_y: Any, x_hat: Any, weight: Any | None) -> tuple[Any, Any, Any]:
    """:func:`affine_backward` of :func:`channel_affine`: returns (dL/dx_hat, dL/dweight, dL/dbias)."""
    channels = x_hat.shape[1]
    w = None if weight is None else weight.reshape(channel_shape(x_hat.ndim, channels))
    return affine_backward(B, grad_y, x_hat, w, batch_axes(x_hat.ndim), (channels,))


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
    x_hat, inv_std, mean, var = normalize(B, x, batch_axes(x.ndim), eps)
    return channel_affine(x_hat, weight, bias), mean.reshape(-1), var.reshape(-1), (x_hat, inv_std)


@overridable
def batch_norm_train_backward(B: Backend, grad_y: Any, ctx: Any, weight: Any | None) -> tuple[Any, Any, Any]:
    """Backward of :func:`batch_norm_train`: returns (dL/dx, dL/dweight, dL/dbias)."""
    x_hat, inv_std = ctx
    grad_xhat, grad_w, grad_b = channel_affine_backward(B, grad_y, x_hat, weight)
    return normalize_backward(B, grad_xhat, x_hat, inv_std, batch_axes(x_hat.ndim)), grad_w, grad_b


@overridable
def batch_norm_eval(
    B: Backend, x: Any, weight: Any | None, bias: Any | None, running_mean: Any, running_var: Any, eps: float
) -> tuple[Any, Any]:
    """Batch norm with the running estimates instead of the batch's statistics. Returns (y, ctx)."""
    x_hat, inv_std = normalize_with(B, x, running_mean, running_var, eps)
    return channel_affine(x_hat, weight, bias), (x_hat, inv_std)


def normalize_with(B: Backend, x: Any, mean: Any, var: Any, eps: float) -> tuple[Any, Any]:
    """x_hat of channels-first ``x`` from given per-channel (C,) statistics: (x_hat, inv_std)."""
    shape = channel_shape(x.ndim, x.shape[1])
    inv_std = B.rsqrt(var.reshape(shape) + eps)
    return (x - mean.reshape(shape)) * inv_std, inv_std


@overridable
def batch_norm_eval_backward(B: Backend, grad_y: Any, ctx: Any, weight: Any | None) -> tuple[Any, Any, Any]:
    """Backward of :func:`batch_norm_eval` (the statistics are constants): (dL/dx, dL/dweight, dL/dbias)."""
    x_hat, inv_std = ctx
    grad_xhat, grad_w, grad_b = channel_affine_backward(B, grad_y, x_hat, weight)
    return grad_xhat * inv_std, grad_w, grad_b


def batch_renorm_train(
    B: Backend,
    x: Any,
    weight: Any | None,
    bias: Any | None,
    running_mean: Any,
    running_var: Any,
    eps: float,
    rmax: float,
    dmax: float,
) -> tuple[Any, Any, Any, Any]:
    """Batch renormalization (Ioffe 2017) in training: returns (y, mean, var, ctx) as batch_norm_train.

    x_hat = (x - mu_B) / sigma_B * r + d, with r = clip(sigma_B / sigma, 1/rmax, rmax) and
    d = clip((mu_B - running_mean) / sigma, -dmax, dmax) from the running statistics given
    (those from before this batch's update).
    """
    xp = B.xp
    shape = channel_shape(x.ndim, x.shape[1])
    x_hat, inv_std, mean, var = normalize(B, x, batch_axes(x.ndim), eps)
    sigma = xp.sqrt(running_var.reshape(shape) + eps)
    r = xp.clip(xp.sqrt(var + eps) / sigma, 1.0 / rmax, rmax)
    d = xp.clip((mean - running_mean.reshape(shape)) / sigma, -dmax, dmax)
    x_renorm = x_hat * r + d
    return (
        channel_affine(x_renorm, weight, bias),
        mean.reshape(-1),
        var.reshape(-1),
        (x_hat, x_renorm, inv_std, r),
    )


def batch_renorm_train_backward(
    B: Backend, grad_y: Any, ctx: Any, weight: Any | None
) -> tuple[Any, Any, Any]:
    """Backward of :func:`batch_renorm_train`, r and d held constant: (dL/dx, dL/dweight, dL/dbias)."""
    x_hat, x_renorm, inv_std, r = ctx
    grad_renorm, grad_w, grad_b = channel_affine_backward(B, grad_y, x_renorm, weight)
    return normalize_backward(B, grad_renorm * r, x_hat, inv_std, batch_axes(x_hat.ndim)), grad_w, grad_b


def sync_batch_norm_train(
    B: Backend, x: Any, weight: Any | None, bias: Any | None, eps: float, group: Any
) -> tuple[Any, Any, Any, int, Any]:
    """Batch norm over the global batch the ranks of ``group`` hold between them.

    Returns (y, mean, var, n, ctx): the global mean and biased variance (C,) and the global
    count ``n`` (for the unbiased running variance). One all-gather of a (4, C) array per
    call: each rank's count, its mean as two parts (mean0 + correction, unrounded), and M2;
    they are merged with :func:`dualnorm.stats.merge_moments`. A rank may hold no samples.
    """
    xp = B.xp
    axes = batch_axes(x.ndim)
    channels = x.shape[1]
    shape = channel_shape(x.ndim, channels)
    n_local = count(x.shape, axes)
    if n_local > 0:
        mean0, correction, var, centred = two_pass_moments(B, x, axes)
        centred = centred - correction
        local = [mean0.reshape(1, -1), correction.reshape(1, -1), (var * n_local).reshape(1, -1)]
    else:  # an empty shard contributes nothing (its mean is undefined)
        local = [B.asarray(np.zeros((1, channels)), x.dtype)] * 3
        centred = x
    count_row = B.asarray(np.full((1, channels), float(n_local)), x.dtype)
    gathered = group.allgather(xp.concatenate([count_row, *local], axis=0))  # (P, 4, C)
    counts = np.rint(B.to_numpy(gathered[:, 0, 0]).astype(np.float64)).astype(np.int64)
    n, mean, m2, offsets = merge_moments(
        xp, counts, gathered[:, 1, :], gathered[:, 3, :], means_lo=gathered[:, 2, :]
    )
    if n <= 1:
        raise InputError(
            f"SyncBatchNorm: expected more than 1 value per channel when training, got "
            f"{n} over the whole group (shard sizes {counts.tolist()}, input shape {tuple(x.shape)} on "
            f"rank {group.rank}). Use a larger global batch, or call .eval()."
        )
    var = m2 / n
    inv_std = B.rsqrt(var.reshape(shape) + eps)
    x_hat = (centred - offsets[group.rank].reshape(shape)) * inv_std
    return channel_affine(x_hat, weight, bias), mean, var, n, (x_hat, inv_std, group, n)


def sync_batch_norm_train_backward(
    B: Backend, grad_y: Any, ctx: Any, weight: Any | None
) -> tuple[Any, Any, Any]:
    """Backward of :func:`sync_batch_norm_train`: (dL/dx, dL/dweight, dL/dbias).

    sum(g) and sum(g * x_hat) over the global batch travel in one all-reduce of a (2, C)
    array; the weight and bias gradients stay local, as in PyTorch.
    """
    x_hat, inv_std, group, n = ctx
    grad_xhat, grad_w, grad_b = channel_affine_backward(B, grad_y, x_hat, weight)
    axes = batch_axes(x_hat.ndim)
    shape = channel_shape(x_hat.ndim, x_hat.shape[1])
    local = B.xp.concatenate([accurate_sum(B, grad_xhat, axes), accurate_sum(B, grad_xhat * x_hat, axes)])
    total = group.allreduce_sum(local.reshape(2, -1)) / n
    grad_in = normalize_backward_from_means(
        grad_xhat, x_hat, inv_std, total[0].reshape(shape), total[1].reshape(shape)
    )
    return grad_in, grad_w, grad_b


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
    return channel_affine(x_hat, weight, bias), (x_hat, inv_std, num_groups)


@overridable
def group_norm_backward(B: Backend, grad_y: Any, ctx: Any, weight: Any | None) -> tuple[Any, Any, Any]:
    """Backward of :func:`group_norm`: returns (dL/dx, dL/dweight, dL/dbias)."""
    x_hat, inv_std, num_groups = ctx
    n = x_hat.shape[0]
    grad_xhat, grad_w, grad_b = channel_affine_backward(B, grad_y, x_hat, weight)
    grad_in = normalize_backward(
        B, grad_xhat.reshape(n, num_groups, -1), x_hat.reshape(n, num_groups, -1), inv_std, (2,)
    )
    return grad_in.reshape(x_hat.shape), grad_w, grad_b


@overridable
def rms_norm(B: Backend, x: Any, weight: Any | None, axes: tuple[int, ...], eps: float) -> tuple[Any, Any]:
    """RMS norm over the trailing ``axes``: y = x / sqrt(mean(x^2) + eps) * weight. Returns (y, ctx)."""
    inv_rms = B.rsqrt(accurate_mean(B, x * x, axes) + eps)
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
    mean_gx = accurate_mean(B, grad_xhat * x_hat, axes)
    return inv_rms * (grad_xhat - x_hat * mean_gx), grad_w


# =============================================================================================
# --- pooling and dropout ----------------------------------------------------------------------
#
# Pooling works on channels-first (N, C, H, W); the 1-d layers view (N, C, L) as (N, C, 1, L).
# A window's values are gathered one window *offset* at a time: for offset (i, j) the strided
# slice ``padded[..., i*dh :: sh, j*dw :: sw]`` holds, for every output pixel at once, the
# input value at that place in its window. So the loops run over the k·k offsets, never over
# pixels. Output sizes follow PyTorch (``pool_output_size``).


def pool_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output length: floor (or ceil) of the window count, and in ceil mode the
    last window must start inside the input or its left padding."""
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * pad - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _window(start: int, count: int, step: int) -> slice:
    return slice(start, start + (count - 1) * step + 1, step)


def _pool_pad(
    B: Backend,
    x: Any,
    out_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    value: float,
) -> Any:
    """``x`` padded with ``value``: ``padding`` on the left/top, and on the right/bottom as much as the
    last window needs (``padding``, or more in ceil mode, or less where the floor drops a remainder)."""
    widths = [(0, 0), (0, 0)]
    for axis in (0, 1):
        need = (out_hw[axis] - 1) * stride[axis] + (kernel[axis] - 1) * dilation[axis] + 1
        widths.append((padding[axis], max(0, need - x.shape[2 + axis] - padding[axis])))
    if all(a == 0 and b == 0 for a, b in widths):
        return x
    return B.xp.pad(x, widths, constant_values=value)


def _offsets(kernel: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(offset number, i, j) in PyTorch's scan order: row by row through the window."""
    return [(i * kernel[1] + j, i, j) for i in range(kernel[0]) for j in range(kernel[1])]


def _first_inside(out: int, stride: int, pad: int, dilation: int, kernel: int) -> np.ndarray:
    """Per output index, the first window offset that lies inside the input (not in the padding)."""
    start = np.arange(out) * stride - pad
    first = np.where(start < 0, -(start // dilation), 0)  # ceil(-start / dilation)
    return np.minimum(first, kernel - 1)


@overridable
def max_pool2d(
    B: Backend,
    x: Any,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
    return_indices: bool = False,
) -> tuple[Any, Any, Any]:
    """Max over each window of (N, C, H, W) ``x``: returns (y, indices or None, ctx).

    As PyTorch: the padding never wins (it is -inf, and a value must be strictly greater to
    replace the running maximum), the first of tied maxima wins, a NaN wins over any number.
    ``indices`` are flat indices into each input H·W plane, as ``torch.nn.MaxPool2d`` gives them.
    """
    xp = B.xp
    oh, ow = out_hw
    padded = _pool_pad(B, x, out_hw, kernel, stride, padding, dilation, -math.inf)
    best = which = None
    for number, i, j in _offsets(kernel):
        v = padded[:, :, _window(i * dilation[0], oh, stride[0]), _window(j * dilation[1], ow, stride[1])]
        if best is None:
            best, which = v, xp.zeros(v.shape, dtype=B.int64)
            continue
        take = (v > best) | (v != v)  # v != v: NaN
        best = xp.where(take, v, best)
        which = xp.where(take, number, which)
    if kernel[0] * kernel[1] == 1:
        best = best * 1.0  # a 1x1 window: a new array, not a view of the caller's input
    # Where every value is -inf, PyTorch points at the window's first place inside the input.
    rows = _first_inside(oh, stride[0], padding[0], dilation[0], kernel[0])
    cols = _first_inside(ow, stride[1], padding[1], dilation[1], kernel[1])
    if rows.any() or cols.any():
        first = B.indices(rows[:, None] * kernel[1] + cols[None, :]).astype(B.int64)
        which = xp.where(best == -math.inf, first, which)
    indices = (
        max_pool2d_indices(B, which, x.shape, kernel, stride, padding, dilation) if return_indices else None
    )
    return best, indices, (which, tuple(x.shape), kernel, stride, padding, dilation)


def max_pool2d_indices(
    B: Backend,
    which: Any,
    in_shape: tuple[int, ...],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Any:
    """Flat H·W indices of the winners from their window offset numbers ``which``."""
    oh, ow = which.shape[2], which.shape[3]
    width = in_shape[3]
    top = B.indices(np.arange(oh) * stride[0] - padding[0]).astype(B.int64).reshape(oh, 1)
    left = B.indices(np.arange(ow) * stride[1] - padding[1]).astype(B.int64).reshape(1, ow)
    row = top + (which // kernel[1]) * dilation[0]
    col = left + (which % kernel[1]) * dilation[1]
    return row * width + col


@overridable
def max_pool2d_backward(B: Backend, grad_y: Any, ctx: Any) -> Any:
    """Backward of :func:`max_pool2d`: each output's gradient goes to its window's winner."""
    which, in_shape, kernel, stride, padding, dilation = ctx
    oh, ow = grad_y.shape[2], grad_y.shape[3]
    grad = _pool_grad_buffer(B, grad_y, in_shape, (oh, ow), kernel, stride, padding, dilation)
    for number, i, j in _offsets(kernel):
        part = B.xp.where(which == number, grad_y, 0.0)
        grad = B.add_strided(grad, part, (i * dilation[0], j * dilation[1]), stride)
    return _pool_crop(grad, in_shape, padding)


def _pool_grad_buffer(
    B: Backend,
    like: Any,
    in_shape: tuple[int, ...],
    out_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Any:
    """Zeros the shape of the padded input, in ``like``'s dtype."""
    shape = list(in_shape)
    for axis in (0, 1):
        need = (out_hw[axis] - 1) * stride[axis] + (kernel[axis] - 1) * dilation[axis] + 1
        shape[2 + axis] = padding[axis] + max(in_shape[2 + axis], need - padding[axis])
    return B.xp.zeros(tuple(shape), dtype=like.dtype)


def _pool_crop(grad: Any, in_shape: tuple[int, ...], padding: tuple[int, int]) -> Any:
    h, w = in_shape[2], in_shape[3]
    if grad.shape[2] == h and grad.shape[3] == w:
        return grad
    return grad[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w]


def avg_pool_divisors(
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    count_include_pad: bool,
    divisor_override: int | None,
) -> np.ndarray:
    """(OH, OW) divisor of each window, as PyTorch counts it: the window clipped to the padded input
    (``count_include_pad``) or to the input itself."""
    if divisor_override:
        return np.full(out_hw, float(divisor_override))
    sizes = []
    for axis in (0, 1):
        start = np.arange(out_hw[axis]) * stride[axis] - padding[axis]
        end = np.minimum(start + kernel[axis], in_hw[axis] + padding[axis])
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, in_hw[axis])
        sizes.append((end - start).astype(np.float64))
    return sizes[0][:, None] * sizes[1][None, :]


def avg_pool2d(
    B: Backend,
    x: Any,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    out_hw: tuple[int, int],
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> tuple[Any, Any]:
    """Mean over each window of (N, C, H, W) ``x`` (zero padding): returns (y, ctx)."""
    oh, ow = out_hw
    ones = (1, 1)
    padded = _pool_pad(B, x, out_hw, kernel, stride, padding, ones, 0.0)
    total = None
    for _, i, j in _offsets(kernel):
        v = padded[:, :, _window(i, oh, stride[0]), _window(j, ow, stride[1])]
        total = v if total is None else total + v
    divisors = avg_pool_divisors(
        x.shape[2:], out_hw, kernel, stride, padding, count_include_pad, divisor_override
    )
    inv = B.from_host(1.0 / divisors, x.dtype)
    return total * inv, (inv, tuple(x.shape), kernel, stride, padding)


def avg_pool2d_backward(B: Backend, grad_y: Any, ctx: Any) -> Any:
    """Backward of :func:`avg_pool2d`: each output's gradient, divided, goes to every place of its window."""
    inv, in_shape, kernel, stride, padding = ctx
    ones = (1, 1)
    share = grad_y * inv
    grad = _pool_grad_buffer(B, grad_y, in_shape, tuple(grad_y.shape[2:]), kernel, stride, padding, ones)
    for _, i, j in _offsets(kernel):
        grad = B.add_strided(grad, share, (i, j), stride)
    return _pool_crop(grad, in_shape, padding)


def adaptive_bounds(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive windows: [floor(i·size/out), ceil((i+1)·size/out)) for each output i."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def adaptive_weights(size: int, out: int) -> np.ndarray:
    """(out, size): row i averages window i (1/length inside it, 0 elsewhere)."""
    weights = np.zeros((out, size))
    for i, (start, end) in enumerate(adaptive_bounds(size, out)):
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool2d(B: Backend, x: Any, out_hw: tuple[int, int]) -> tuple[Any, Any]:
    """Adaptive average pooling of (N, C, H, W) ``x`` to ``out_hw``: returns (y, ctx).

    Windows are separable, so the rows are averaged first, then the columns: one slice-sum per
    output row and column. (A matrix product would turn an inf into NaN in the windows that
    weight it by 0.)
    """
    xp = B.xp
    h, w = x.shape[2], x.shape[3]
    rows = [xp.mean(x[:, :, a:b, :], axis=2, keepdims=True) for a, b in adaptive_bounds(h, out_hw[0])]
    x = xp.concatenate(rows, axis=2)
    cols = [xp.mean(x[:, :, :, a:b], axis=3, keepdims=True) for a, b in adaptive_bounds(w, out_hw[1])]
    y = xp.concatenate(cols, axis=3)
    weights = (
        B.from_host(adaptive_weights(h, out_hw[0]), y.dtype),
        B.from_host(adaptive_weights(w, out_hw[1]), y.dtype),
    )
    return y, weights


def adaptive_avg_pool2d_backward(B: Backend, grad_y: Any, ctx: Any) -> Any:
    """Backward of :func:`adaptive_avg_pool2d`: the transposed averaging, Rhᵀ · dY · Rw."""
    rows, cols = ctx
    return rows.T @ (grad_y @ cols)


def dropout_multiplier(
    B: Backend, shape: tuple[int, ...], p: float, dtype: Any, rng: np.random.Generator
) -> Any:
    """A fresh mask of ``shape``: 1/(1-p) where kept (probability 1-p), 0 where dropped.

    Drawn with NumPy from ``rng`` whatever the backend, so the same seed drops the same units
    on NumPy and on MLX. p = 1 drops everything (the multiplier is 0, not 0·inf).
    """
    keep = rng.random(shape, dtype=np.float32) >= p
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    host = np.where(keep, np.asarray(scale, B.numpy_dtype(dtype)), np.asarray(0.0, B.numpy_dtype(dtype)))
    return B.from_host(host, dtype)


def dropout(B: Backend, x: Any, multiplier: Any) -> Any:
    """y = x · multiplier (the mask broadcasts: whole channels for Dropout2d)."""
    return x * multiplier


def dropout_backward(B: Backend, grad_y: Any, multiplier: Any) -> Any:
    """Backward of :func:`dropout`: the same mask and scale."""
    return grad_y * multiplier
