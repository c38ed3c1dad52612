"""Local response normalization (Krizhevsky et al. 2012, AlexNet): lateral inhibition across channels.

Each activation is divided by the energy of its neighbouring channels::

    s_c = k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} x_{c'}^2     (zero outside [0, C))
    y_c = x_c / s_c^beta

as in ``torch.nn.LocalResponseNorm`` (note the division by ``size``).
"""

from __future__ import annotations

from typing import Any

from dualnorm.errors import InputError
from dualnorm.nn._checks import check_non_negative, check_positive_int
from dualnorm.nn.module import Module


def window_sum(xp: Any, v: Any, front: int, back: int) -> Any:
    """Sum of ``v`` over channels c-front .. c+back (axis 1), with zeros outside the range."""
    channels = v.shape[1]
    pad = [(0, 0)] * v.ndim
    pad[1] = (front, back)
    padded = xp.pad(v, pad)
    total = padded[:, 0:channels]
    for offset in range(1, front + back + 1):
        total = total + padded[:, offset : offset + channels]
    return total


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
        front, back = self.size // 2, (self.size - 1) // 2
        s = self.k + (self.alpha / self.size) * window_sum(self.xp, x * x, front, back)
        scale = s ** (-self.beta)
        self._save(x=x, s=s, scale=scale)
        return x * scale

    def backward(self, grad_output: Any) -> Any:
        saved = self._saved_values()
        if saved.get("empty"):
            return self._empty_backward(grad_output)
        x, s, scale = saved["x"], saved["s"], saved["scale"]
        grad = self._check_grad(grad_output, x.shape)
        # x_j appears in the window of every channel c with c - front <= j <= c + back,
        # i.e. c in [j - back, j + front]: the transposed window.
        front, back = self.size // 2, (self.size - 1) // 2
        through_s = window_sum(self.xp, grad * x * scale / s, back, front)
        return grad * scale - (2.0 * self.alpha * self.beta / self.size) * x * through_s

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
