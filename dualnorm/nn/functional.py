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
        if not kwargs:  # the layers' calls
            return (impl or fn)(B, *args)
        if kwargs.get("out") is not None and name in OUT_FORWARDS:
            return _forward_into(B, impl or fn, name, kwargs.pop("out"), args, kwargs)
        kwargs.pop("out", None)
        return (impl or fn)(B, *args, **kwargs)

    dispatch.reference = fn  # type: ignore[attr-defined]
    return dispatch  # type: ignore[return-value]


# Forwards that take ``out=`` (as NumPy ufuncs do): y is written into ``out`` and ``out`` returned
# in its place. A kernel marked ``writes_out`` writes there directly (no new output array); any
# other is copied in. The backward keeps the input, never y, so ``out`` may be reused freely
# once the forward returned (not while it still overlaps the input).
OUT_FORWARDS = {"batch_norm_train", "batch_norm_eval", "layer_norm", "group_norm", "rms_norm"}


def writes_out(fn: F) -> F:
    """Mark a kernel that takes ``out=`` and writes y there itself."""
    fn.writes_out = True  # type: ignore[attr-defined]
    return fn


def check_out(B: Backend, out: Any, x: Any, what: str) -> np.ndarray:
    """``out`` if it can take the forward of ``x``; else a clear :class:`InputError`."""
    if B.name != "numpy" or not isinstance(out, np.ndarray):
        raise InputError(
            f"{what}: out= takes a NumPy array on the NumPy backend (MLX arrays are immutable); got "
            f"{type(out).__name__} on the {B.name} backend. Use the returned array instead."
        )
    if out.shape != tuple(x.shape) or out.dtype != x.dtype or not out.flags.writeable:
        raise InputError(
            f"{what}: out has shape {out.shape} and dtype {out.dtype}"
            f"{'' if out.flags.writeable else ' (read-only)'}; expected a writeable array of the "
            f"input's shape {tuple(x.shape)} and dtype {x.dtype}"
        )
    if np.may_share_memory(out, x):
        raise InputError(f"{what}: out overlaps the input, which the backward reads; pass a separate array")
    return out


def _forward_into(
    B: Backend, impl: Callable[..., Any], name: str, out: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    check_out(B, out, args[0], name)
    if getattr(impl, "writes_out", False):
        result = impl(B, *args, out=out, **kwargs)
    else:
        result = impl(B, *args, **kwargs)
    y = result[0]
    if not np.may_share_memory(y, out):
        np.copyto(out, y)
    return (out, *result[1:])


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
    """mean0 + correction; mean0 where the correction is not finite (an inf in the data, or a
    float32 sum past 3.4e38 near float32's max: the mean is +-inf, as PyTorch's running_mean
    shows, not inf - inf = NaN)."""
    return xp.where(xp.isfinite(correction), mean0 + correction, mean0)


def _var_of(xp: Any, mean_sq: Any, correction: Any) -> Any:
    """mean((x - mean0)^2) - correction^2, never below 0; where both terms overflow (|x| ~ 1e30
    in float32) the variance is inf, as in PyTorch (x_hat is then 0), not inf - inf = NaN."""
    var = mean_sq - correction * correction
    return xp.where(xp.isnan(var), mean_sq, xp.maximum(var, 0.0))


# A float32 square overflows from |x - mean| > 1.8e19, where the variance itself is past float32
# (PyTorch: inf, so x_hat = 0 or NaN) but 1 / std is not. There the inverse standard deviation
# comes from the squares of the deviations scaled by 2^-96 first: for every finite float32
# deviation above 2^64 (up to 2^129) the scaled square neither overflows nor underflows, and
# powers of two scale exactly.
_DOWN = 2.0**-96


def inv_std_of(B: Backend, centred: Any, axes: tuple[int, ...], var: Any, eps: float) -> Any:
    """1 / sqrt(var + eps) of the ``centred`` data, also where ``var`` overflowed its dtype."""
    inv_std = B.rsqrt(var + eps)
    xp = B.xp
    if xp is np and not np.isinf(var).any():  # eager NumPy: only pay where it overflowed
        return inv_std
    scaled = accurate_mean(B, xp.square(centred * _DOWN), axes)
    overflowed = xp.isinf(var) & xp.isfinite(scaled)
    # rsqrt of 1 where unused: elsewhere `scaled` underflows to 0, and a gradient through the
    # unused branch of a where (mx.grad) would be 0 * inf = NaN
    safe = xp.where(overflowed, scaled, 1.0)
    return xp.where(overflowed, B.rsqrt(safe) * _DOWN, inv_std)  # eps is far below a variance past 3e38


@overridable
def normalize(B: Backend, x: Any, axes: tuple[int, ...], eps: float) -> tuple[Any, Any, Any, Any]:
    """x_hat = (x - mean) / sqrt(var + eps) over ``axes``; returns (x_hat, inv_std, mean, var)."""
    mean, var, centred = moments(B, x, axes)
    inv_std = inv_std_of(B, centred, axes, var, eps)
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
def update_running_stats(
    B: Backend, running_mean: Any, running_var: Any, mean: Any, var: Any, momentum: Any, n: int
) -> tuple[Any, Any]:
    """PyTorch's moving averages of a batch's statistics: returns the new (running_mean, running_var).

    running = (1 - momentum) * running + momentum * batch, the batch variance made unbiased
    (times n / (n - 1), n values per channel). ``momentum`` is a float, or for a cumulative
    average 1 / (batches seen) as a 0-d array of the buffers' dtype.
    """
    keep = 1 - momentum
    unbiased = var.reshape(-1) * (n / max(n - 1, 1))
    return keep * running_mean + momentum * mean.reshape(-1), keep * running_var + momentum * unbiased


@overridable
def batch_norm_train_tracked(
    B: Backend,
    x: Any,
    weight: Any | None,
    bias: Any | None,
    eps: float,
    running_mean: Any,
    running_var: Any,
    momentum: Any,
) -> tuple[Any, Any, Any, Any, Any, Any]:
    """:func:`batch_norm_train`, then :func:`update_running_stats` with its batch's statistics, as
    one call (a backend may fuse the update into its kernel): (y, mean, var, new running_mean,
    new running_var, ctx); ctx goes to :func:`batch_norm_train_backward`."""
    y, mean, var, ctx = batch_norm_train(B, x, weight, bias, eps)
    n = math.prod(x.shape) // x.shape[1]  # values per channel
    new_mean, new_var = update_running_stats(B, running_mean, running_var, mean, var, momentum, n)
    return y, mean, var, new_mean, new_var, ctx


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
    inv_rms = inv_std_of(B, x, axes, accurate_mean(B, x * x, axes), eps)
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


# === convolution ==================================================================================
#
# Conv1d and Conv2d, channels-first as in PyTorch: x (N, C, H, W), weight (O, C/G, kh, kw), groups G.
# A 1-d convolution is the 2-d one with H = kh = 1. Cross-correlation, as every framework computes:
#
#     y[n, o, p, q] = b[o] + sum_{c in group(o), i, j} w[o, c, i, j] * x_pad[n, c, p*sh + i*dh, q*sw + j*dw]
#
# written as one matrix product: the column buffer col[n, (c, i, j), (p, q)] holds the input value
# each weight meets (im2col), so y = W @ col per group, (O/G, C/G*kh*kw) @ (C/G*kh*kw, OH*OW), which
# is already NCHW. The backward: dW = dY @ colᵀ, dcol = Wᵀ @ dY, and dx gathers dcol back onto the
# input positions it was copied from (col2im).


CONV_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def conv_output_size(size: int, kernel: int, stride: int, pad: tuple[int, int], dilation: int) -> int:
    """Output length along one axis: floor((size + lo + hi - dilation*(kernel-1) - 1) / stride) + 1."""
    return (size + pad[0] + pad[1] - dilation * (kernel - 1) - 1) // stride + 1


def pad_source_indices(size: int, pad: tuple[int, int], mode: str) -> np.ndarray:
    """For each position of the padded axis, the input position it copies (reflect/replicate/circular)."""
    positions = np.arange(-pad[0], size + pad[1])
    if mode == "replicate":
        return np.clip(positions, 0, size - 1)
    if mode == "circular":
        return positions % size
    # reflect: mirror about the first and the last element, which are not repeated
    period = 2 * (size - 1) if size > 1 else 1
    folded = np.abs(positions) % period
    return np.where(folded >= size, period - folded, folded)


def conv_pad(B: Backend, x: Any, pads: Sequence[tuple[int, int]], mode: str) -> Any:
    """Pad the trailing ``len(pads)`` axes of ``x`` by (lo, hi) each, with zeros or by ``mode``."""
    lead = [(0, 0)] * (x.ndim - len(pads))
    if mode == "zeros":
        return B.xp.pad(x, [*lead, *pads]) if any(lo or hi for lo, hi in pads) else x
    for axis, pad in enumerate(pads, start=len(lead)):
        if pad[0] or pad[1]:
            x = B.xp.take(x, B.indices(pad_source_indices(x.shape[axis], pad, mode)), axis=axis)
    return x


def conv_pad_backward(B: Backend, grad: Any, pads: Sequence[tuple[int, int]], mode: str) -> Any:
    """Backward of :func:`conv_pad`: each input position receives the gradient of every copy of it."""
    xp = B.xp
    first = grad.ndim - len(pads)
    if mode == "zeros":
        index = tuple(slice(lo, grad.shape[first + k] - hi) for k, (lo, hi) in enumerate(pads))
        return grad[(slice(None),) * first + index]
    for axis, pad in reversed(list(enumerate(pads, start=first))):
        if pad[0] or pad[1]:
            size = grad.shape[axis] - pad[0] - pad[1]
            source = pad_source_indices(size, pad, mode)
            # (padded, size) one-hot: summing the copies is a product with it along ``axis``
            scatter = B.asarray((source[:, None] == np.arange(size)[None, :]).astype(np.float64), grad.dtype)
            grad = xp.swapaxes(xp.swapaxes(grad, axis, -1) @ scatter, axis, -1)
    return grad


def _conv_window(
    x: Any, i: int, j: int, out_hw: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> Any:
    """The (N, C, OH, OW) input values that kernel tap (i, j) meets: a strided slice of padded x."""
    (oh, ow), (sh, sw), (dh, dw) = out_hw, stride, dilation
    return x[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]


def _spread(xp: Any, a: Any, axis: int, stride: int, offset: int, size: int) -> Any:
    """Place the entries of ``a`` along ``axis`` at offset, offset + stride, ... in a zero axis of ``size``."""
    n = a.shape[axis]
    if stride > 1:  # interleave stride-1 zeros after each entry, then drop the trailing ones
        shape = list(a.shape)
        a = xp.stack([a] + [xp.zeros(tuple(shape), dtype=a.dtype)] * (stride - 1), axis=axis + 1)
        shape[axis] = n * stride
        a = a.reshape(tuple(shape))
        a = a[(slice(None),) * axis + (slice(0, stride * (n - 1) + 1),)]
    widths = [(0, 0)] * a.ndim
    widths[axis] = (offset, size - offset - a.shape[axis])
    return xp.pad(a, widths)


@overridable
def conv2d(
    B: Backend,
    x: Any,
    weight: Any,
    bias: Any | None,
    stride: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    dilation: tuple[int, int],
    groups: int,
) -> tuple[Any, Any]:
    """2-d cross-correlation of (N, C, H, W) ``x`` with zero ``padding`` ((top, bottom), (left, right)).

    Returns (y, ctx), y of shape (N, O, OH, OW); ``ctx`` is for :func:`conv2d_backward` only.
    """
    xp = B.xp
    n = x.shape[0]
    out_c, cg, kh, kw = weight.shape
    xpad = conv_pad(B, x, padding, "zeros")
    oh = conv_output_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
    ow = conv_output_size(x.shape[3], kw, stride[1], padding[1], dilation[1])
    taps = [_conv_window(xpad, i, j, (oh, ow), stride, dilation) for i in range(kh) for j in range(kw)]
    col = xp.stack(taps, axis=2).reshape(n, groups, cg * kh * kw, oh * ow)  # (N, G, C/G*kh*kw, L)
    y = (weight.reshape(groups, out_c // groups, cg * kh * kw) @ col).reshape(n, out_c, oh, ow)
    if bias is not None:
        y = y + bias.reshape(1, out_c, 1, 1)
    return y, (col, tuple(xpad.shape), stride, padding, dilation, groups)


@overridable
def conv2d_backward(B: Backend, grad_y: Any, ctx: Any, weight: Any) -> tuple[Any, Any, Any]:
    """Backward of :func:`conv2d`: returns (dL/dx, dL/dweight, dL/dbias)."""
    xp = B.xp
    col, padded_shape, stride, padding, dilation, groups = ctx
    n, out_c, oh, ow = grad_y.shape
    _, cg, kh, kw = weight.shape
    g = grad_y.reshape(n, groups, out_c // groups, oh * ow)
    grad_w = xp.sum(g @ xp.swapaxes(col, -1, -2), axis=0).reshape(weight.shape)
    grad_b = xp.sum(grad_y, axis=(0, 2, 3))
    w_t = xp.swapaxes(weight.reshape(groups, out_c // groups, cg * kh * kw), -1, -2)
    grad_col = (w_t @ g).reshape(n, groups * cg, kh, kw, oh, ow)
    _, _, hp, wp = padded_shape
    grad_pad = xp.zeros(padded_shape, dtype=grad_y.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = _spread(xp, grad_col[:, :, i, j], 2, stride[0], i * dilation[0], hp)
            grad_pad = grad_pad + _spread(xp, rows, 3, stride[1], j * dilation[1], wp)
    return conv_pad_backward(B, grad_pad, padding, "zeros"), grad_w, grad_b


# =============================================================================================
# Local response normalization (Krizhevsky et al. 2012) over the channels of (N, C, *) input:
#
#     s_c = k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} x_{c'}^2     (zeros outside)
#     y_c = x_c * s_c^(-beta)
#
# Backward: x_j is in the window of every channel c in [j - (size-1)//2, j + size//2] (the
# transposed window), so with t = g * x * s^(-beta) / s,
#
#     dL/dx_j = g_j * s_j^(-beta) - 2 * alpha * beta / size * x_j * sum_{c in window^T(j)} t_c


def lrn_window_sum(xp: Any, v: Any, front: int, back: int) -> Any:
    """Sum of ``v`` over channels c-front .. c+back (axis 1), with zeros outside the range."""
    channels = v.shape[1]
    pad = [(0, 0)] * v.ndim
    pad[1] = (front, back)
    padded = xp.pad(v, pad)
    total = padded[:, 0:channels]
    for offset in range(1, front + back + 1):
        total = total + padded[:, offset : offset + channels]
    return total


@overridable
def local_response_norm(
    B: Backend, x: Any, size: int, alpha: float, beta: float, k: float
) -> tuple[Any, tuple[Any, Any, Any]]:
    """(y, ctx): LRN of (N, C, *) ``x`` as ``torch.nn.LocalResponseNorm`` (note the division by size)."""
    s = k + (alpha / size) * lrn_window_sum(B.xp, x * x, size // 2, (size - 1) // 2)
    scale = s ** (-beta)
    return x * scale, (x, s, scale)


@overridable
def local_response_norm_backward(
    B: Backend, grad_y: Any, ctx: Any, size: int, alpha: float, beta: float
) -> Any:
    """dL/dx of :func:`local_response_norm` from ``ctx``."""
    x, s, scale = ctx
    through_s = lrn_window_sum(B.xp, grad_y * x * scale / s, (size - 1) // 2, size // 2)
    return grad_y * scale - (2.0 * alpha * beta / size) * x * through_s
