"""Instance normalization (Ulyanov et al. 2016): per sample and per channel, over the spatial axes.

Used in style transfer, where each image's own contrast should be removed. Defaults
follow PyTorch: ``affine=False, track_running_stats=False``. With running stats
tracked, the running estimates are the batch average of the per-instance statistics
(PyTorch does not count ``num_batches_tracked`` here, and ``momentum=None`` leaves
them unchanged).

As in PyTorch: with ``affine=False`` and no running statistics, ``num_features`` is not
used, so an input with another channel count is normalized (with a warning); an empty
input gives an empty output and leaves the running statistics as they were.
"""

from __future__ import annotations

import warnings
from typing import Any

from dualnorm.errors import InputError
from dualnorm.nn import functional as F
from dualnorm.nn._checks import check_ndim, check_size
from dualnorm.nn.batchnorm import _NormBase
from dualnorm.nn.module import _data


class _InstanceNorm(_NormBase):
    _spatial_dims = 1
    _layout = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        *,
        bias: bool = True,
        dtype: str | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias=bias, dtype=dtype)

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        batched = self._spatial_dims + 2
        in_shape = x.shape
        if len(in_shape) != batched:
            check_ndim(self, x, (batched - 1, batched), self._layout)
        unbatched = len(in_shape) == batched - 1
        if unbatched:
            x = x.reshape((1, *in_shape))
        c = x.shape[1]
        if c != self.num_features and not self.affine and not self.track_running_stats:
            warnings.warn(
                f"{type(self).__name__}({self.num_features}): input's size at dim={int(not unbatched)} "
                f"does not match num_features ({x.shape[1]} != {self.num_features}); normalizing anyway, "
                "as num_features is not used when affine=False and track_running_stats=False "
                "(as PyTorch). Build the layer with the input's channel count to silence this warning.",
                UserWarning,
                stacklevel=2,
            )
        elif c != self.num_features:
            check_size(self, x, 1, self.num_features, "channels (num_features)")
        if x.size == 0:
            return self._empty_forward(x, in_shape)
        training, tracking = self.training, self.track_running_stats
        use_input_stats = training or not tracking
        spatial = x.size // (x.shape[0] * c)
        if use_input_stats and spatial == 1:
            raise InputError(
                f"{type(self).__name__}: expected more than 1 spatial element when normalizing per instance, "
                f"got input of shape {tuple(x.shape)}"
            )
        if use_input_stats and not (training and tracking):
            # Exactly group norm with one channel per group: a whole-layer call a backend may fuse.
            weight, bias = self._params()
            y, ctx = F.group_norm(self.backend, x, c, weight, bias, self.eps)
            self._save((ctx, x.shape, unbatched))  # (a plain tuple: this is every call's bookkeeping)
            return y[0] if unbatched else y
        axes = tuple(range(2, x.ndim))
        shape = F.channel_shape(x.ndim, c)
        if use_input_stats:
            x_hat, inv_std, mean, var = F.normalize(self.backend, x, axes, self.eps)
            if self.training and self.track_running_stats and self.momentum is not None:
                m = self.momentum
                unbiased = var * (spatial / (spatial - 1))
                self.running_mean = (1 - m) * self.running_mean + m * self.xp.mean(mean, axis=0).reshape(-1)
                self.running_var = (1 - m) * self.running_var + m * self.xp.mean(unbiased, axis=0).reshape(-1)
        else:
            x_hat, inv_std = self._normalize_with_running_stats(x, shape)
        self._save(
            x_hat=x_hat,
            inv_std=inv_std,
            axes=axes,
            shape=shape,
            input_stats=use_input_stats,
            unbatched=unbatched,
        )
        y = self._affine(x_hat, shape)
        return y[0] if unbatched else y

    def backward(self, grad_output: Any) -> Any:
        s = self._saved_values()
        if type(s) is tuple:  # the group norm path
            ctx, batch_shape, unbatched = s
            out_shape = batch_shape[1:] if unbatched else batch_shape
            grad = self._check_grad(grad_output, out_shape)
            if unbatched:
                grad = grad.reshape(batch_shape)
            params = self._affine_parameters()
            grad_in, grad_w, grad_b = F.group_norm_backward(self.backend, grad, ctx, _data(params[0]))
            self._accumulate_affine(grad_w, grad_b, params)
            return grad_in.reshape(out_shape) if unbatched else grad_in
        if s.get("empty"):
            return self._empty_backward(grad_output)
        x_hat = s["x_hat"]
        out_shape = x_hat.shape[1:] if s["unbatched"] else x_hat.shape
        grad = self._check_grad(grad_output, out_shape).reshape(x_hat.shape)
        weight = self.weight.data.reshape(s["shape"]) if self.weight is not None else None
        grad_xhat, grad_w, grad_b = F.affine_backward(
            self.backend, grad, x_hat, weight, F.batch_axes(x_hat.ndim), (x_hat.shape[1],)
        )
        self._accumulate_affine(grad_w, grad_b)
        if s["input_stats"]:
            grad_in = F.normalize_backward(self.backend, grad_xhat, x_hat, s["inv_std"], s["axes"])
        else:
            grad_in = grad_xhat * s["inv_std"]
        return grad_in.reshape(out_shape)


class InstanceNorm1d(_InstanceNorm):
    """Instance normalization over (N, C, L) or unbatched (C, L) input.

    Args:
        num_features: C.
        eps: added to the variance (default 1e-5).
        momentum: for the running statistics when tracked (default 0.1).
        affine: learn per-channel weight and bias (default False).
        track_running_stats: keep running statistics for eval mode (default False).
        bias: with ``affine``, also learn the bias (default True; as PyTorch 2.x).
    """

    _spatial_dims = 1
    _layout = "(N, C, L) or (C, L)"


class InstanceNorm2d(_InstanceNorm):
    """Instance normalization over (N, C, H, W) or unbatched (C, H, W) input (arguments as InstanceNorm1d)."""

    _spatial_dims = 2
    _layout = "(N, C, H, W) or (C, H, W)"


class InstanceNorm3d(_InstanceNorm):
    """Instance normalization over (N, C, D, H, W) or unbatched (C, D, H, W) input (arguments as InstanceNorm1d)."""

    _spatial_dims = 3
    _layout = "(N, C, D, H, W) or (C, D, H, W)"
