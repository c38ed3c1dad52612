"""Batch normalization (Ioffe & Szegedy 2015) and batch renormalization (Ioffe 2017).

Training normalizes each channel with the statistics of the current mini-batch::

    mu_B      = mean of x over the batch (and spatial) axes
    sigma2_B  = mean of (x - mu_B)^2                 (biased)
    x_hat     = (x - mu_B) / sqrt(sigma2_B + eps)
    y         = gamma * x_hat + beta

and keeps running estimates for inference::

    running_mean = (1 - momentum) * running_mean + momentum * mu_B
    running_var  = (1 - momentum) * running_var  + momentum * sigma2_B * m / (m - 1)   (unbiased)

``momentum=None`` uses a cumulative average (momentum = 1 / num_batches_tracked).
In eval mode the running estimates replace the batch statistics, so any batch size,
even one sample, works. Layouts are channels-first, as in PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from dualnorm.errors import InputError
from dualnorm.nn import functional as F
from dualnorm.nn._checks import check_momentum, check_ndim, check_non_negative, check_positive_int, check_size
from dualnorm.nn.module import Module, _data


class BatchNormContext(NamedTuple):
    """What a batch norm forward keeps for its backward."""

    backward: Callable[..., tuple[Any, Any, Any]]  # the functional backward paired with the forward used
    ctx: Any  # that forward's context, opaque: owned by the kernel that made it
    out_shape: tuple[int, ...]


def _context(backward: Callable[..., Any], ctx: Any, out_shape: Any) -> tuple[Any, Any, tuple[int, ...]]:
    """What :class:`BatchNormContext` holds, as a plain tuple (building the NamedTuple costs ~0.6 µs
    a call, every step)."""
    return (backward, ctx, tuple(out_shape))


_ONE = np.ones((), np.int64)


class _NormBase(Module):
    """What batch and instance norm share (PyTorch's ``_NormBase``): arguments, γ/β, running buffers."""

    def __init__(
        self,
        num_features: int,
        eps: float,
        momentum: float | None,
        affine: bool,
        track_running_stats: bool,
        *,
        bias: bool = True,
        dtype: str | None = None,
    ) -> None:
        super().__init__(dtype=dtype)
        name = type(self).__name__
        self.num_features = check_positive_int("num_features", num_features, name)
        self.eps = check_non_negative("eps", eps, name)
        self.momentum = check_momentum(momentum, name)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.weight = None
        self.bias = None
        if self.affine:
            self.weight = self._new_parameter(np.ones(num_features))
            if bias:
                self.bias = self._new_parameter(np.zeros(num_features))
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(buffer, None)
        self.reset_running_stats()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean = self._const(np.zeros(self.num_features))
            self.running_var = self._const(np.ones(self.num_features))
            self.num_batches_tracked = self._const(np.array(0), self.backend.int64)

    def _normalize_with_running_stats(self, x: Any, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """Inference: x_hat from the running estimates instead of the batch's; returns (x_hat, inv_std)."""
        return F.normalize_with(self.backend, x, self.running_mean, self.running_var, self.eps)

    def _affine(self, x_hat: Any, shape: tuple[int, ...]) -> Any:
        """y = x_hat * weight + bias, each part only when the layer has it."""
        return F.channel_affine(x_hat, *self._params())

    def extra_repr(self) -> str:
        # As PyTorch 2.x prints it (``bias`` says whether the layer has a bias).
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
        )


class _BatchNorm(_NormBase):
    _ndims: tuple[int, ...] = ()
    _layout = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        bias: bool = True,
        dtype: str | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias=bias, dtype=dtype)

    def _check(self, x: Any) -> bool:
        """Check the input; returns whether this call normalizes with the batch's statistics."""
        shape = x.shape
        if len(shape) not in self._ndims or shape[1] != self.num_features:
            check_ndim(self, x, self._ndims, self._layout)
            check_size(self, x, 1, self.num_features, "channels (num_features)")
        # Batch statistics of one value are meaningless: PyTorch refuses them in training, and in
        # eval too when there are no running statistics to use instead.
        # (running_mean from the buffer table: __getattr__ is slow)
        batch_stats = self.training or self._buffers["running_mean"] is None
        if batch_stats and x.size // self.num_features == 1:
            raise InputError(
                f"{type(self).__name__}: expected more than 1 value per channel when training, got input "
                f"of shape {tuple(x.shape)}. Use a batch of at least 2 samples, or call .eval() to "
                "normalize with the running statistics."
            )
        if batch_stats and not self.eps > 0:
            raise InputError(
                f"{type(self).__name__}: batch_norm eps must be positive during training (normalizing "
                f"with batch statistics), but got eps={self.eps}; 1/sqrt(var + 0) is infinite on a "
                "constant channel. Use eps > 0 (default 1e-5)."
            )
        return batch_stats

    def _next_batch(self) -> tuple[Any, Any]:
        """(num_batches_tracked after this batch, the momentum of its update: 1 / that count when
        ``momentum=None``)."""
        count = self._buffers["num_batches_tracked"]
        # (a 0-d NumPy count plus a 0-d one: 1.1 µs; plus the Python int 1, converted each time: 1.9)
        tracked = count + (_ONE if type(count) is np.ndarray else 1)
        return tracked, 1.0 / tracked.astype(self.dtype) if self.momentum is None else self.momentum

    def _update_running_stats(self, mean: Any, var: Any, n: int) -> None:
        """The exponential moving average PyTorch keeps (unbiased variance)."""
        # Straight into the buffer table (what __setattr__ does for a buffer), fewest array ops:
        # this runs every training step, and its Python cost is most of a small layer's overhead.
        buffers = self._buffers
        buffers["num_batches_tracked"], factor = self._next_batch()
        buffers["running_mean"], buffers["running_var"] = F.update_running_stats(
            self.backend, buffers["running_mean"], buffers["running_var"], mean, var, factor, n
        )

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        batch_stats = self._check(x)
        if x.size == 0:
            if self.training and self.track_running_stats:
                self.num_batches_tracked = self.num_batches_tracked + 1  # PyTorch counts the call
            return self._empty_forward(x)
        weight, bias = self._params()
        if not batch_stats:
            y, ctx = F.batch_norm_eval(
                self.backend, x, weight, bias, self.running_mean, self.running_var, self.eps
            )
            self._save(_context(F.batch_norm_eval_backward, ctx, x.shape))
            return y
        if self.training and self.track_running_stats:
            y, saved = self._tracked_batch_forward(x, weight, bias)
        else:
            y, _, _, saved = self._batch_forward(x, weight, bias)
        self._save(saved)
        return y

    def _batch_forward(self, x: Any, weight: Any, bias: Any) -> tuple[Any, Any, Any, BatchNormContext]:
        """Normalize with this batch's statistics: (y, mean, var, context to save)."""
        y, mean, var, ctx = F.batch_norm_train(self.backend, x, weight, bias, self.eps)
        return y, mean, var, _context(F.batch_norm_train_backward, ctx, x.shape)

    def _tracked_batch_forward(self, x: Any, weight: Any, bias: Any) -> tuple[Any, BatchNormContext]:
        """:meth:`_batch_forward` and the running statistics' update, in one functional call."""
        tracked, factor = self._next_batch()
        buffers = self._buffers
        y, _, _, buffers["running_mean"], buffers["running_var"], ctx = F.batch_norm_train_tracked(
            self.backend, x, weight, bias, self.eps, buffers["running_mean"], buffers["running_var"], factor
        )
        buffers["num_batches_tracked"] = tracked
        return y, _context(F.batch_norm_train_backward, ctx, x.shape)

    def backward(self, grad_output: Any) -> Any:
        saved = self._saved_values()
        if type(saved) is dict:  # the empty input's
            return self._empty_backward(grad_output)
        backward, ctx, out_shape = saved  # (a BatchNormContext's fields)
        grad = self._check_grad(grad_output, out_shape)
        params = self._affine_parameters()
        grad_in, grad_w, grad_b = backward(self.backend, grad, ctx, _data(params[0]))
        self._accumulate_affine(grad_w, grad_b, params)
        return grad_in


class BatchNorm1d(_BatchNorm):
    """Batch normalization over (N, C) or (N, C, L) input.

    Args:
        num_features: C, the number of features or channels.
        eps: added to the variance for numerical stability (default 1e-5).
        momentum: weight of the *new* batch in the running averages (default 0.1);
            None for a cumulative average.
        affine: learn gamma (``weight``, ones) and beta (``bias``, zeros) per feature.
        track_running_stats: keep ``running_mean``/``running_var`` for eval mode.
        bias: with ``affine``, also learn beta (default True; False: weight only, as
            PyTorch 2.x's ``bias=False``).

    A batch of size 0 (or any dimension of size 0) gives an empty output; training
    leaves the running statistics as they were but counts the call in
    ``num_batches_tracked``, as PyTorch does. ``eps`` must be > 0 when normalizing with
    batch statistics.

    The documents' worked example:

    >>> import numpy as np, dualnorm
    >>> bn = dualnorm.nn.BatchNorm1d(1)
    >>> y = bn(np.arange(1.0, 7.0).reshape(6, 1))
    >>> [round(float(v), 4) for v in dualnorm.to_numpy(y).ravel()]
    [-1.4638, -0.8783, -0.2928, 0.2928, 0.8783, 1.4638]
    """

    _ndims = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalization over (N, C, H, W) input, per channel (arguments as BatchNorm1d)."""

    _ndims = (4,)
    _layout = "(N, C, H, W)"


class BatchNorm3d(_BatchNorm):
    """Batch normalization over (N, C, D, H, W) input, per channel (arguments as BatchNorm1d)."""

    _ndims = (5,)
    _layout = "(N, C, D, H, W)"


class _BatchRenorm(_BatchNorm):
    """Batch renormalization (Ioffe 2017): train and inference see the same transform.

    In training, the batch-normalized value is corrected towards the running
    statistics with two factors treated as constants in the backward pass::

        sigma   = sqrt(running_var + eps),  sigma_B = sqrt(var_B + eps)
        r       = clip(sigma_B / sigma, 1/rmax, rmax)
        d       = clip((mu_B - running_mean) / sigma, -dmax, dmax)
        x_hat   = (x - mu_B) / sigma_B * r + d

    With ``rmax=1, dmax=0`` it is exactly batch norm. The paper relaxes them from
    (1, 0) to (3, 5) during training; the defaults here are those final values
    (set ``layer.rmax`` / ``layer.dmax`` to schedule them). The running statistics
    use PyTorch's BatchNorm convention (momentum weights the new batch, unbiased
    variance), and the corrections use the running statistics from *before* this
    batch's update, as in the paper.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        rmax: float = 3.0,
        dmax: float = 5.0,
        *,
        bias: bool = True,
        dtype: str | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats=True, bias=bias, dtype=dtype
        )
        self.rmax = check_non_negative("rmax", rmax, type(self).__name__)
        self.dmax = check_non_negative("dmax", dmax, type(self).__name__)
        if self.rmax < 1:
            raise InputError(
                f"{type(self).__name__}: rmax must be >= 1 (1 means plain batch norm), got {rmax!r}"
            )

    def _tracked_batch_forward(self, x: Any, weight: Any, bias: Any) -> tuple[Any, BatchNormContext]:
        y, mean, var, saved = self._batch_forward(x, weight, bias)  # reads the statistics before the update
        self._update_running_stats(mean, var, x.size // self.num_features)
        return y, saved

    def _batch_forward(self, x: Any, weight: Any, bias: Any) -> tuple[Any, Any, Any, BatchNormContext]:
        # Only in training: eval always has running statistics. They are read before the update.
        y, mean, var, ctx = F.batch_renorm_train(
            self.backend, x, weight, bias, self.running_mean, self.running_var, self.eps, self.rmax, self.dmax
        )
        return y, mean, var, _context(F.batch_renorm_train_backward, ctx, x.shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}"


class BatchRenorm1d(_BatchRenorm):
    """Batch renormalization over (N, C) or (N, C, L) input.

    Args:
        num_features: C, the number of features or channels.
        eps: added to the variance (default 1e-5).
        momentum: weight of the new batch in the running averages (default 0.1).
        affine: learn ``weight`` (ones) and ``bias`` (zeros) per feature.
        rmax: bound of the scale correction r, clipped to [1/rmax, rmax] (default 3).
        dmax: bound of the shift correction d, clipped to [-dmax, dmax] (default 5).
        bias: with ``affine``, also learn the bias (default True).
    """

    _ndims = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchRenorm2d(_BatchRenorm):
    """Batch renormalization over (N, C, H, W) input, per channel (arguments as BatchRenorm1d)."""

    _ndims = (4,)
    _layout = "(N, C, H, W)"
