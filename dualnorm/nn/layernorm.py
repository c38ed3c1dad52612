"""Layer normalization (Ba et al. 2016) and RMS normalization (Zhang & Sennrich 2019).

Both normalize each sample over its trailing ``normalized_shape`` axes, so they do
not depend on the batch: the choice for sequences and small or variable batches.

LayerNorm::   y = (x - mean) / sqrt(var + eps) * weight + bias
RMSNorm::     y = x / sqrt(mean(x^2) + eps) * weight
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from dualnorm.errors import RuntimeInputError
from dualnorm.nn import functional as F
from dualnorm.nn._checks import as_shape, check_non_negative
from dualnorm.nn.module import Module, _data


class _TrailingNorm(Module):
    def _check(self, x: Any) -> tuple[int, ...]:
        """The axes to normalize over (the trailing ``normalized_shape``), or a clear error."""
        shape, ns = x.shape, self.normalized_shape
        k = len(ns)
        if 0 < k <= len(shape) and shape[len(shape) - k :] == ns:  # (MLX's and NumPy's shapes are tuples)
            return _trailing_axes(len(shape), k)
        if k == 0:
            raise RuntimeInputError(
                f"{type(self).__name__}(normalized_shape=()) normalizes over no dimension: as in PyTorch, the "
                "layer can be built but not called (normalized_shape must have at least one dimension). "
                f"Give the trailing shape to normalize over, e.g. {type(self).__name__}({tuple(x.shape)[-1:]})"
            )
        # A RuntimeError (as PyTorch raises) and a ValueError (as dualnorm always did).
        raise RuntimeInputError(
            f"{type(self).__name__}(normalized_shape={self.normalized_shape}) expects input whose last "
            f"{k} dimension(s) are {self.normalized_shape}; got shape {tuple(x.shape)}"
        )

    # Each subclass supplies its functional pair; the layer around it is the same.
    def _functional(self, x: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
        raise NotImplementedError

    def _functional_backward(
        self, grad: Any, ctx: Any, axes: tuple[int, ...], weight: Any
    ) -> tuple[Any, Any, Any]:
        raise NotImplementedError

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        axes = self._check(x)
        if x.size == 0:
            return self._empty_forward(x)
        y, ctx = self._functional(x, axes)
        self._save((ctx, axes, x.shape))  # (a plain tuple: this is every call's bookkeeping)
        return y

    def backward(self, grad_output: Any) -> Any:
        s = self._saved_values()
        if type(s) is dict:  # the empty input's
            return self._empty_backward(grad_output)
        ctx, axes, out_shape = s
        grad = self._check_grad(grad_output, out_shape)
        params = self._affine_parameters()
        grad_in, grad_w, grad_b = self._functional_backward(grad, ctx, axes, _data(params[0]))
        self._accumulate_affine(grad_w, grad_b, params)
        return grad_in


@functools.cache
def _trailing_axes(ndim: int, k: int) -> tuple[int, ...]:
    return tuple(range(ndim - k, ndim))


class LayerNorm(_TrailingNorm):
    """Layer normalization over the trailing ``normalized_shape`` dimensions.

    Args:
        normalized_shape: int or tuple, the trailing shape to normalize over.
        eps: added to the variance (default 1e-5).
        elementwise_affine: learn ``weight`` (ones) and ``bias`` (zeros) of shape
            ``normalized_shape`` (default True).
        bias: learn the bias when ``elementwise_affine`` (default True).

    >>> import numpy as np, dualnorm
    >>> ln = dualnorm.nn.LayerNorm(4)
    >>> y = dualnorm.to_numpy(ln(np.array([[1.0, 2.0, 3.0, 4.0]])))
    >>> bool(abs(y.mean()) < 1e-6)
    True
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype: str | None = None,
    ) -> None:
        super().__init__(dtype=dtype)
        # () builds, as in PyTorch; calling it raises (as PyTorch's forward does).
        self.normalized_shape = as_shape(normalized_shape, "LayerNorm", allow_empty=True)
        self.eps = check_non_negative("eps", eps, "LayerNorm")
        self.elementwise_affine = bool(elementwise_affine)
        object.__setattr__(self, "weight", None)
        object.__setattr__(self, "bias", None)
        if self.elementwise_affine:
            self.weight = self._new_parameter(np.ones(self.normalized_shape))
            if bias:
                self.bias = self._new_parameter(np.zeros(self.normalized_shape))

    def _functional(self, x: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
        weight, bias = self._params()
        return F.layer_norm(self.backend, x, weight, bias, axes, self.eps)

    def _functional_backward(
        self, grad: Any, ctx: Any, axes: tuple[int, ...], weight: Any
    ) -> tuple[Any, Any, Any]:
        return F.layer_norm_backward(self.backend, grad, ctx, weight, axes)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"bias={self.bias is not None}"
        )


class RMSNorm(_TrailingNorm):
    """Root-mean-square normalization over the trailing ``normalized_shape`` dimensions.

    No centring and no bias: ``y = x / sqrt(mean(x^2) + eps) * weight``.

    Args:
        normalized_shape: int or tuple, the trailing shape to normalize over.
        eps: added to the mean square; ``None`` (default, as in PyTorch) means the
            machine epsilon of the dtype (1.19e-7 for float32).
        elementwise_affine: learn ``weight`` (ones) of shape ``normalized_shape``.
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float | None = None,
        elementwise_affine: bool = True,
        *,
        dtype: str | None = None,
    ) -> None:
        super().__init__(dtype=dtype)
        # () builds, as in PyTorch; calling it raises (as PyTorch's forward does).
        self.normalized_shape = as_shape(normalized_shape, "RMSNorm", allow_empty=True)
        self.eps = None if eps is None else check_non_negative("eps", eps, "RMSNorm")
        self.elementwise_affine = bool(elementwise_affine)
        object.__setattr__(self, "weight", None)
        if self.elementwise_affine:
            self.weight = self._new_parameter(np.ones(self.normalized_shape))

    def _functional(self, x: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
        eps = self.backend.eps(x.dtype) if self.eps is None else self.eps
        return F.rms_norm(self.backend, x, self._params()[0], axes, eps)

    def _functional_backward(
        self, grad: Any, ctx: Any, axes: tuple[int, ...], weight: Any
    ) -> tuple[Any, Any, Any]:
        grad_in, grad_w = F.rms_norm_backward(self.backend, grad, ctx, weight, axes)
        return grad_in, grad_w, None  # no bias

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
