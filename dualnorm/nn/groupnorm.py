"""Group normalization (Wu & He 2018): channels split into groups, normalized per sample and group.

``num_groups=1`` is layer norm over (C, *); ``num_groups=C`` is instance norm.
Groups are *contiguous* channel blocks, as in PyTorch (channels 0..C/G-1 form group 0).
MLX's ``nn.GroupNorm`` groups interleaved channels unless ``pytorch_compatible=True``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dualnorm.errors import InputError
from dualnorm.nn import functional as F
from dualnorm.nn._checks import check_non_negative, check_positive_int, check_size
from dualnorm.nn.module import Module, _data


class GroupNorm(Module):
    """Group normalization over (N, C, *) input.

    Args:
        num_groups: G; must divide ``num_channels``.
        num_channels: C.
        eps: added to the variance (default 1e-5).
        affine: learn per-channel ``weight`` (ones) and ``bias`` (zeros) (default True).
        bias: with ``affine``, also learn the bias (default True; as PyTorch 2.x).

    As in PyTorch, an input with a single value per group and sample in all
    (N * C / G * spatial == 1) is refused, and an empty input gives an empty output.

    >>> import numpy as np, dualnorm
    >>> gn = dualnorm.nn.GroupNorm(2, 4)
    >>> dualnorm.to_numpy(gn(np.random.rand(3, 4, 5))).shape
    (3, 4, 5)
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        bias: bool = True,
        *,
        dtype: str | None = None,
    ) -> None:
        super().__init__(dtype=dtype)
        self.num_groups = check_positive_int("num_groups", num_groups, "GroupNorm")
        self.num_channels = check_positive_int("num_channels", num_channels, "GroupNorm")
        if num_channels % num_groups:
            raise InputError(
                f"GroupNorm: num_channels ({num_channels}) must be divisible by num_groups ({num_groups}); "
                f"valid group counts for {num_channels} channels: "
                f"{[g for g in range(1, num_channels + 1) if num_channels % g == 0]}"
            )
        self.eps = check_non_negative("eps", eps, "GroupNorm")
        self.affine = bool(affine)
        object.__setattr__(self, "weight", None)
        object.__setattr__(self, "bias", None)
        if self.affine:
            self.weight = self._new_parameter(np.ones(num_channels))
            if bias:
                self.bias = self._new_parameter(np.zeros(num_channels))

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        if x.ndim < 2:
            raise InputError(
                f"GroupNorm expects (N, C, *) input with at least 2 dimensions; got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.num_channels:
            check_size(self, x, 1, self.num_channels, "channels (num_channels)")
        # PyTorch's rule (F.group_norm -> _verify_batch_size): N * C / G times the spatial size.
        values = x.size // self.num_groups
        if values == 1:
            raise InputError(
                f"GroupNorm({self.num_groups}, {self.num_channels}): expected more than 1 value per channel "
                f"when training, got input of shape {tuple(x.shape)}: each group holds a single value, "
                "whose variance is 0. Use fewer groups or a larger input."
            )
        if x.size == 0:
            return self._empty_forward(x)
        weight, bias = self._params()
        y, ctx = F.group_norm(self.backend, x, self.num_groups, weight, bias, self.eps)
        self._save((ctx, x.shape))  # (a plain tuple: this is every call's bookkeeping)
        return y

    def backward(self, grad_output: Any) -> Any:
        s = self._saved_values()
        if type(s) is dict:  # the empty input's
            return self._empty_backward(grad_output)
        ctx, out_shape = s
        grad = self._check_grad(grad_output, out_shape)
        params = self._affine_parameters()
        grad_in, grad_w, grad_b = F.group_norm_backward(self.backend, grad, ctx, _data(params[0]))
        self._accumulate_affine(grad_w, grad_b, params)
        return grad_in

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )
