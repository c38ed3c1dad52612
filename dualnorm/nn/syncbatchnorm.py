"""Synchronized batch normalization: batch statistics over the global batch spread across processes.

In training, every rank summarizes its shard per channel as (count, mean, M2), the
ranks exchange these summaries (one all-gather of a ``(4, C)`` array: the mean travels
as two float32 parts) and merge them
with a numerically stable parallel update (Chan et al.; see
:mod:`dualnorm.distributed.stats`), so each rank normalizes with the mean and biased
variance of the *concatenated* global batch, even when ranks hold different numbers
of samples. The running statistics are updated with the global unbiased variance.

The backward pass needs two per-channel sums over the global batch, ``sum(g)`` and
``sum(g * x_hat)`` with ``g = dL/dx_hat``; they travel in one all-reduce of a
``(2, C)`` array and are divided by the global count::

    dL/dx = inv_std * (g - sum(g) / N - x_hat * sum(g * x_hat) / N)

``weight`` and ``bias`` gradients stay local, as in PyTorch: combine them (with all the
other parameters) by :func:`dualnorm.distributed.allreduce_gradients`.

A group of size 1 runs BatchNorm's own code, and eval mode never communicates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dualnorm.errors import InputError
from dualnorm.nn import functional as F
from dualnorm.nn.batchnorm import _BatchNorm, _BatchRenorm
from dualnorm.nn.module import Module

__all__ = ["SyncBatchNorm"]


class SyncBatchNorm(_BatchNorm):
    """Batch normalization over (N, C, *) input with statistics over the whole process group.

    Args (as ``torch.nn.SyncBatchNorm``):
        num_features: C, the number of channels.
        eps: added to the variance (default 1e-5).
        momentum: weight of the new batch in the running averages (default 0.1); None for
            a cumulative average.
        affine: learn ``weight`` (ones) and ``bias`` (zeros).
        track_running_stats: keep ``running_mean``/``running_var`` for eval mode.
        process_group: a :class:`dualnorm.distributed.ProcessGroup`; None uses the default
            group at call time (:func:`dualnorm.distributed.init_process_group`, or a single
            process when none was made, which is exactly ``BatchNorm``).

    >>> import numpy as np, dualnorm
    >>> bn = dualnorm.nn.SyncBatchNorm(1)
    >>> y = bn(np.arange(1.0, 7.0).reshape(6, 1))      # one process: plain batch norm
    >>> np.round(dualnorm.to_numpy(y).ravel(), 4).tolist()
    [-1.4638, -0.8783, -0.2928, 0.2928, 0.8783, 1.4638]
    """

    _ndims = (2, 3, 4, 5)
    _layout = "(N, C, *)"

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        *,
        dtype: str | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype=dtype)
        object.__setattr__(self, "process_group", process_group)

    def _group(self) -> Any:
        if self.process_group is not None:
            return self.process_group
        from dualnorm.distributed import get_default_group

        return get_default_group()

    def _check_local(self, x: Any) -> None:
        # The "more than one value per channel" rule applies to the global batch (checked after
        # the exchange): a rank may hold one sample, or none.
        from dualnorm.nn._checks import check_ndim, check_size

        check_ndim(self, x, self._ndims, self._layout)
        check_size(self, x, 1, self.num_features, "channels (num_features)")

    def forward(self, x: Any) -> Any:
        group = self._group()
        if group.size == 1 or not self.training:
            return super().forward(x)  # no communication: BatchNorm exactly
        x = self._input(x)
        self._check_local(x)
        B, xp = self.backend, self.xp
        axes = F.batch_axes(x.ndim)
        shape = F.channel_shape(x.ndim, self.num_features)
        n_local = F.count(x.shape, axes)
        if n_local > 0:
            # F.moments' corrected two-pass algorithm, keeping the mean as the unrounded pair
            # mean0 + correction: rounding it to one float32 would cost digits on data far from zero.
            mean0 = xp.mean(x, axis=axes, keepdims=True)
            centred = x - mean0
            correction = xp.mean(centred, axis=axes, keepdims=True)
            var = xp.maximum(
                xp.mean(centred * centred, axis=axes, keepdims=True) - correction * correction, 0.0
            )
            centred = centred - correction
            local = [mean0.reshape(1, -1), correction.reshape(1, -1), (var * n_local).reshape(1, -1)]
        else:  # an empty shard contributes nothing (its mean is undefined)
            local = [self._const(np.zeros((1, self.num_features)))] * 3
            centred = x
        count_row = self._const(np.full((1, self.num_features), float(n_local)))
        gathered = group.allgather(xp.concatenate([count_row, *local], axis=0))  # (P, 4, C)
        counts = np.rint(B.to_numpy(gathered[:, 0, 0]).astype(np.float64)).astype(np.int64)
        from dualnorm.distributed.stats import merge_moments

        n, global_mean, global_m2, offsets = merge_moments(
            xp, counts, gathered[:, 1, :], gathered[:, 3, :], means_lo=gathered[:, 2, :]
        )
        if n <= 1:
            raise InputError(
                f"{type(self).__name__}: expected more than 1 value per channel when training, got "
                f"{n} over the whole group (shard sizes {counts.tolist()}, input shape {tuple(x.shape)} on "
                f"rank {group.rank}). Use a larger global batch, or call .eval()."
            )
        global_var = global_m2 / n
        inv_std = B.rsqrt(global_var.reshape(shape) + self.eps)
        x_hat = (centred - offsets[group.rank].reshape(shape)) * inv_std
        if self.track_running_stats:
            self._update_running_stats(global_mean, global_var, n)
        self._save(x_hat=x_hat, inv_std=inv_std, batch_stats=True, axes=axes, shape=shape, sync=(group, n))
        return self._affine(x_hat, shape)

    def _batch_stats_backward(self, grad_xhat: Any, saved: dict[str, Any]) -> Any:
        sync = saved.get("sync")
        if sync is None:
            return super()._batch_stats_backward(grad_xhat, saved)
        group, n = sync
        xp = self.xp
        x_hat, axes, shape = saved["x_hat"], saved["axes"], saved["shape"]
        local = xp.stack([xp.sum(grad_xhat, axis=axes), xp.sum(grad_xhat * x_hat, axis=axes)])
        total = group.allreduce_sum(local) / n
        mean_g = total[0].reshape(shape)
        mean_gx = total[1].reshape(shape)
        return saved["inv_std"] * (grad_xhat - mean_g - x_hat * mean_gx)

    def extra_repr(self) -> str:
        group = "default" if self.process_group is None else repr(self.process_group)
        return f"{super().extra_repr()}, process_group={group}"

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group: Any = None) -> Module:
        """Replace every ``BatchNorm1d/2d/3d`` in ``module`` by a ``SyncBatchNorm`` (as PyTorch does).

        The new layers share the old ones' ``weight``/``bias`` Parameters and take over
        their running statistics, mode, backend and dtype, so the state_dict is unchanged.
        Returns the converted module (a new object when ``module`` itself is a batch norm).
        Batch renormalization layers are left as they are.
        """
        converted = module
        if isinstance(module, _BatchNorm) and not isinstance(module, (_BatchRenorm, SyncBatchNorm)):
            from dualnorm.backends import use_backend

            with use_backend(module.backend.name):
                converted = cls(
                    module.num_features,
                    module.eps,
                    module.momentum,
                    module.affine,
                    module.track_running_stats,
                    process_group,
                    dtype=str(module.dtype),
                )
            if module.affine:
                converted.weight = module.weight
                if module.bias is None:  # BatchNorm(bias=False)
                    converted._parameters.pop("bias")
                    object.__setattr__(converted, "bias", None)
                else:
                    converted.bias = module.bias
            if module.track_running_stats:
                converted.running_mean = module.running_mean
                converted.running_var = module.running_var
                converted.num_batches_tracked = module.num_batches_tracked
            object.__setattr__(converted, "training", module.training)
        for name, child in list(module.named_children()):
            converted._modules[name] = cls.convert_sync_batchnorm(child, process_group)
        return converted
