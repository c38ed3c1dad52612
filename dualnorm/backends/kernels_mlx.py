"""Fast paths for the MLX backend (registered into ``backend.kernels``).

* Batch and group norm: the forward and the backward are each one ``mx.compile``d
  function, so MLX fuses their element-wise chains into a few kernels instead of
  materializing every intermediate. The forward keeps the input and the statistics
  (not a full-size ``x_hat``); the backward rebuilds ``x_hat`` inside its fused kernel.
* Layer norm: ``mx.fast.layer_norm`` (the fused kernel ``mlx.nn.LayerNorm`` uses), and
  its built-in VJP for the backward.

Nothing here leaves the device: no ``.item()``, no NumPy conversion; arrays stay lazy
until the caller evaluates them. The variance is the reference's corrected two-pass
(never E[x^2] - E[x]^2), so float32 data far from zero stay accurate, and every sum is
the reference's blocked sum (:func:`dualnorm.nn.functional.accurate_sum`: float32 only,
so it also runs on a GPU), so long rows stay accurate too.
"""

from __future__ import annotations

import functools
from typing import Any

import mlx.core as mx

from dualnorm.backends.base import Backend
from dualnorm.nn import functional as F


def _sum(x: mx.array, axes: tuple[int, ...]) -> mx.array:
    return F.accurate_sum(_MLX, x, axes)


def _mean(x: mx.array, axes: tuple[int, ...]) -> mx.array:
    return F.accurate_mean(_MLX, x, axes)


class _XP:
    """Just enough of a backend for F.accurate_sum and F.two_pass_moments inside compiled functions."""

    xp = mx


_MLX: Any = _XP()


# --- batch norm ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _bn_forward(ndim: int, eps: float, has_w: bool, has_b: bool) -> Any:
    axes = (0, *range(2, ndim))
    shape = (1, -1) + (1,) * (ndim - 2)

    def fwd(x: mx.array, *params: mx.array) -> tuple[mx.array, ...]:
        mean0, corr, var, centred = F.two_pass_moments(_MLX, x, axes)
        inv_std = mx.rsqrt(var + eps)
        scale = inv_std * params[0].reshape(shape) if has_w else inv_std
        y = (centred - corr) * scale
        if has_b:
            y = y + params[-1].reshape(shape)
        return y, mean0, corr, var, inv_std

    return mx.compile(fwd)


@functools.lru_cache(maxsize=64)
def _bn_backward(ndim: int, affine: bool) -> Any:
    axes = (0, *range(2, ndim))
    shape = (1, -1) + (1,) * (ndim - 2)

    def bwd(
        g: mx.array, x: mx.array, mean0: mx.array, corr: mx.array, inv_std: mx.array, *params: mx.array
    ) -> Any:
        x_hat = ((x - mean0) - corr) * inv_std
        grad_b = _sum(g, axes).reshape(-1)
        grad_w = _sum(g * x_hat, axes).reshape(-1)
        m = x.size // x.shape[1]
        scale = inv_std * params[0].reshape(shape) if affine else inv_std
        mean_g = (grad_b / m).reshape(shape)
        mean_gx = (grad_w / m).reshape(shape)
        dx = scale * (g - mean_g - x_hat * mean_gx)
        return dx, grad_w, grad_b

    return mx.compile(bwd)


def batch_norm_train(
    B: Backend, x: mx.array, weight: mx.array | None, bias: mx.array | None, eps: float
) -> tuple[mx.array, mx.array, mx.array, Any]:
    params = tuple(p for p in (weight, bias) if p is not None)
    y, mean0, corr, var, inv_std = _bn_forward(x.ndim, float(eps), weight is not None, bias is not None)(
        x, *params
    )
    return y, F._mean_of(mx, mean0, corr).reshape(-1), var.reshape(-1), (x, mean0, corr, inv_std)


def batch_norm_train_backward(
    B: Backend, grad_y: mx.array, ctx: Any, weight: mx.array | None
) -> tuple[mx.array, mx.array, mx.array]:
    x, mean0, corr, inv_std = ctx
    affine = weight is not None
    params = (weight,) if affine else ()
    return _bn_backward(x.ndim, affine)(grad_y, x, mean0, corr, inv_std, *params)


# --- group norm (rows of (N, G, L)) ------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _gn_forward(groups: int, eps: float, has_w: bool, has_b: bool) -> Any:
    def fwd(x: mx.array, *params: mx.array) -> tuple[mx.array, ...]:
        n, c = x.shape[0], x.shape[1]
        xg = x.reshape(n, groups, -1)
        mean0, corr, var, centred = F.two_pass_moments(_MLX, xg, (2,))
        inv_std = mx.rsqrt(var + eps)
        x_hat = ((centred - corr) * inv_std).reshape(n, c, -1)
        if has_w:
            x_hat = x_hat * params[0].reshape(1, c, 1)
        if has_b:
            x_hat = x_hat + params[-1].reshape(1, c, 1)
        return x_hat.reshape(x.shape), mean0, corr, inv_std

    return mx.compile(fwd)


@functools.lru_cache(maxsize=64)
def _gn_backward(groups: int, affine: bool) -> Any:
    def bwd(
        g: mx.array, x: mx.array, mean0: mx.array, corr: mx.array, inv_std: mx.array, *params: mx.array
    ) -> Any:
        n, c = x.shape[0], x.shape[1]
        x_hat = (((x.reshape(n, groups, -1) - mean0) - corr) * inv_std).reshape(n, c, -1)
        g3 = g.reshape(n, c, -1)
        grad_w = _sum(g3 * x_hat, (0, 2)).reshape(-1)
        grad_b = _sum(g3, (0, 2)).reshape(-1)
        gx = g3 * params[0].reshape(1, c, 1) if affine else g3
        gx = gx.reshape(n, groups, -1)
        xh = x_hat.reshape(n, groups, -1)
        dx = inv_std * (gx - _mean(gx, (2,)) - xh * _mean(gx * xh, (2,)))
        return dx.reshape(x.shape), grad_w, grad_b

    return mx.compile(bwd)


def group_norm(
    B: Backend, x: mx.array, num_groups: int, weight: mx.array | None, bias: mx.array | None, eps: float
) -> tuple[mx.array, Any]:
    params = tuple(p for p in (weight, bias) if p is not None)
    y, mean0, corr, inv_std = _gn_forward(num_groups, float(eps), weight is not None, bias is not None)(
        x, *params
    )
    return y, (x, mean0, corr, inv_std, num_groups)


def group_norm_backward(
    B: Backend, grad_y: mx.array, ctx: Any, weight: mx.array | None
) -> tuple[mx.array, mx.array, mx.array]:
    x, mean0, corr, inv_std, groups = ctx
    affine = weight is not None
    params = (weight,) if affine else ()
    return _gn_backward(groups, affine)(grad_y, x, mean0, corr, inv_std, *params)


# --- layer norm: mx.fast.layer_norm over the flattened trailing axes ----------------------------
#
# mx.fast.layer_norm computes its statistics in one float32 pass: on 1e4 + N(0, 1e-2) data
# it is off by ~0.15 (so is mlx.nn.LayerNorm). Layer norm is invariant to a per-row shift,
# so the kernel first subtracts each row's first element (exact for nearby values); the
# fused kernel then sees data centred near zero. The shift is a constant to the gradient
# (stop_gradient): through it, the gradient would be -sum(dx), zero only in exact
# arithmetic, and column 0 would collect every row's rounding error.
# Its single pass also drifts on long rows (output 1.8e-5 from float64 at 65536 elements,
# 2.6e-3 at 4M; input gradient 1.5e-5 at 8192, 4e-6 at 4096), so rows longer than
# FAST_LN_MAX take the reference (blocked sums).

FAST_LN_MAX = 4096


@functools.lru_cache(maxsize=64)
def _ln(eps: float) -> Any:
    def fwd(x: mx.array, w: mx.array | None, b: mx.array | None) -> mx.array:
        return mx.fast.layer_norm(x - mx.stop_gradient(x[:, :1]), w, b, eps)

    return fwd


class _FastLayerNormContext(tuple):
    """What the fused forward saves; any other context came from the reference forward."""


def layer_norm(
    B: Backend,
    x: mx.array,
    weight: mx.array | None,
    bias: mx.array | None,
    axes: tuple[int, ...],
    eps: float,
) -> tuple[mx.array, Any]:
    trailing = tuple(x.shape[x.ndim - len(axes) :])
    d = 1
    for s in trailing:
        d *= s
    if x.dtype != mx.float32 or d > FAST_LN_MAX:
        # mx.fast.layer_norm computes in float32 precision even for float64 input.
        return F.layer_norm.reference(B, x, weight, bias, axes, eps)
    x2 = x.reshape(-1, d)
    w = None if weight is None else weight.reshape(d)
    b = None if bias is None else bias.reshape(d)
    y = _ln(float(eps))(x2, w, b)
    return y.reshape(x.shape), _FastLayerNormContext((x2, w, b, float(eps), x.shape, trailing))


def layer_norm_backward(
    B: Backend, grad_y: mx.array, ctx: Any, weight: mx.array | None, axes: tuple[int, ...]
) -> tuple[mx.array, mx.array, mx.array]:
    if not isinstance(ctx, _FastLayerNormContext):
        return F.layer_norm_backward.reference(B, grad_y, ctx, weight, axes)
    x2, w, b, eps, shape, trailing = ctx
    d = x2.shape[-1]
    # Missing parameters become ones/zeros so the VJP also yields their would-be gradients.
    w = mx.ones((d,), dtype=x2.dtype) if w is None else w
    b = mx.zeros((d,), dtype=x2.dtype) if b is None else b
    _, (dx, dw, db) = mx.vjp(_ln(eps), [x2, w, b], [grad_y.reshape(x2.shape)])
    return dx.reshape(shape), dw.reshape(trailing), db.reshape(trailing)


# --- convolution -----------------------------------------------------------------------------
#
# mx.conv_general is channels-last (N, H, W, C) with (O, kh, kw, C/G) weights: transpose at the
# edges, and take the backward from MLX's own VJP of the same call. MLX's float64 convolution
# runs only on the CPU and its VJP refuses strided or dilated float64 ("[Convolution::eval] got
# unsupported data type", mlx 0.32): float64 takes the reference.


class _ConvContext(tuple):
    """What the MLX forward saves; any other context came from the reference forward."""


def _conv_nhwc(stride: tuple[int, int], padding: Any, dilation: tuple[int, int], groups: int) -> Any:
    lo = [padding[0][0], padding[1][0]]
    hi = [padding[0][1], padding[1][1]]

    def conv(x: mx.array, w: mx.array) -> mx.array:
        return mx.conv_general(x, w, stride=stride, padding=(lo, hi), kernel_dilation=dilation, groups=groups)

    return conv


def conv2d(
    B: Backend,
    x: mx.array,
    weight: mx.array,
    bias: mx.array | None,
    stride: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    dilation: tuple[int, int],
    groups: int,
) -> tuple[mx.array, Any]:
    if x.dtype != mx.float32:
        return F.conv2d.reference(B, x, weight, bias, stride, padding, dilation, groups)
    x_nhwc = mx.transpose(x, (0, 2, 3, 1))
    w_ohwi = mx.transpose(weight, (0, 2, 3, 1))
    conv = _conv_nhwc(tuple(stride), tuple(map(tuple, padding)), tuple(dilation), groups)
    y = mx.transpose(conv(x_nhwc, w_ohwi), (0, 3, 1, 2))
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y, _ConvContext((x_nhwc, w_ohwi, conv))


def conv2d_backward(B: Backend, grad_y: mx.array, ctx: Any, weight: mx.array) -> tuple[Any, Any, Any]:
    if not isinstance(ctx, _ConvContext):
        return F.conv2d_backward.reference(B, grad_y, ctx, weight)
    x_nhwc, w_ohwi, conv = ctx
    _, (dx, dw) = mx.vjp(conv, [x_nhwc, w_ohwi], [mx.transpose(grad_y, (0, 2, 3, 1))])
    grad_b = mx.sum(grad_y, axis=(0, 2, 3))
    return mx.transpose(dx, (0, 3, 1, 2)), mx.transpose(dw, (0, 3, 1, 2)), grad_b


KERNELS = F.kernels_in(globals())  # every function above named as the functional it replaces
