"""Linear (fully connected / affine) layer: y = x W^T + b."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dualnorm._rng import get_rng
from dualnorm.nn._checks import check_ndim, check_positive_int, check_size
from dualnorm.nn.module import Module, Parameter


def _matmul(a: Any, b: Any) -> Any:
    """``a @ b`` for a 2-D ``b``. A product over one term (``b`` has one row) is an outer product,
    computed as one: NumPy's matmul takes a slow loop there instead of BLAS ((10000, 1) @ (1, 1):
    53 µs against 4 µs), and dying-relu's Linear(1, 1) is that product, twice a step. Each value is
    the same single product (a zero may keep its sign, as PyTorch's does)."""
    if b.shape[0] == 1 and a.ndim >= 2:  # (a 1-D a is a vector: matmul drops its axis, a product would not)
        return a * b
    return a @ b


class Linear(Module):
    """Applies ``y = x @ weight.T + bias``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias (default True).
        dtype: "float32" (default) or "float64".

    Weights start as in PyTorch: uniform in ``[-1/sqrt(in_features), 1/sqrt(in_features)]``,
    drawn from dualnorm's seeded generator (``dualnorm.manual_seed``), so both
    backends start from identical numbers.

    >>> import numpy as np, dualnorm
    >>> dualnorm.manual_seed(0)
    >>> layer = dualnorm.nn.Linear(3, 2)
    >>> dualnorm.to_numpy(layer(np.ones((4, 3)))).shape
    (4, 2)
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, dtype: str | None = None
    ) -> None:
        super().__init__(dtype=dtype)
        self.in_features = check_positive_int("in_features", in_features, "Linear")
        self.out_features = check_positive_int("out_features", out_features, "Linear")
        bound = 1.0 / math.sqrt(in_features)
        rng = get_rng()
        self.weight = self._new_parameter(rng.uniform(-bound, bound, (out_features, in_features)))
        self.bias = self._new_parameter(rng.uniform(-bound, bound, (out_features,))) if bias else None

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        if x.ndim == 0:
            check_ndim(self, x, (1, 2), "(N, in_features)")
        check_size(self, x, -1, self.in_features, "input features")
        self._save(x=x)
        y = _matmul(x, self.weight.data.T)
        if self.bias is None:
            return y
        if isinstance(y, np.ndarray):  # y is new: add the bias in place (same sums, no new array)
            return np.add(y, self.bias.data, out=y)
        return y + self.bias.data

    def backward(self, grad_output: Any) -> Any:
        x = self._saved_values()["x"]
        grad = self._check_grad(grad_output, (*x.shape[:-1], self.out_features))
        flat_g = grad.reshape(-1, self.out_features)
        flat_x = x.reshape(-1, self.in_features)
        self._accumulate(self.weight, flat_g.T @ flat_x)
        if self.bias is not None:
            self._accumulate(self.bias, flat_g.sum(axis=0))
        return _matmul(grad, self.weight.data)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


__all__ = ["Linear", "Parameter"]
