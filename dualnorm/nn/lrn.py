"""Local response normalization (Krizhevsky et al. 2012, AlexNet): lateral inhibition across channels.

Each activation is divided by the energy of its neighbouring channels::

    s_c = k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} x_{c'}^2     (zero outside [0, C))
    y_c = x_c / s_c^beta

as in ``torch.nn.LocalResponseNorm`` (note the division by ``size``). The maths is the
functional pair :func:`dualnorm.nn.functional.local_response_norm` and its backward.
"""

from __future__ import annotations

from typing import Any

from dualnorm.errors import InputError
from dualnorm.nn import functional as F
from dualnorm.nn._checks import check_non_negative, check_positive_int
from dualnorm.nn.module import Module


class LocalResponseNorm(Module):
    """Local response normalization over (N, C, *) input with at least 3 dimensions.

    Args:
        size: number of neighbouring channels in the window.
        alpha: multiplicative factor (default 1e-4).
        beta: exponent (default 0.75).
        k: additive factor (default 1.0).
    """

    def __init__(
        self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, *, dtype: str | None = None
    ) -> None:
        super().__init__(dtype=dtype)
        self.size = check_positive_int("size", size, "LocalResponseNorm")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = check_non_negative("k", k, "LocalResponseNorm")

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        if x.ndim < 3:
            raise InputError(
                f"LocalResponseNorm expects (N, C, *) input with 3 or more dimensions; got shape {tuple(x.shape)}"
            )
        if x.size == 0:
            return self._empty_forward(x)
        y, ctx = F.local_response_norm(self.backend, x, self.size, self.alpha, self.beta, self.k)
        self._save(ctx=ctx)
        return y

    def backward(self, grad_output: Any) -> Any:
        saved = self._saved_values()
        if saved.get("empty"):
            return self._empty_backward(grad_output)
        ctx = saved["ctx"]
        grad = self._check_grad(grad_output, ctx[0].shape)
        return F.local_response_norm_backward(self.backend, grad, ctx, self.size, self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
