"""Spectral normalization (Miyato et al. 2018): divide a weight by its largest singular value.

::

    W_sn = W / sigma(W),   sigma(W) ~ u^T W v   (power iteration, one step per training forward)

Used in GAN discriminators to bound the Lipschitz constant. Semantics and key names
follow ``torch.nn.utils.spectral_norm``: parameter ``weight_orig``, buffers
``weight_u`` and ``weight_v``; u and v are updated only in training mode and are
treated as constants in the backward pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dualnorm._rng import get_rng
from dualnorm.nn._checks import check_positive_int
from dualnorm.nn.module import Parameter
from dualnorm.nn.weight_norm import _ReparametrizedWeight


class SpectralNorm(_ReparametrizedWeight):
    """Spectral normalization of ``module.<name>``; prefer the :func:`spectral_norm` function.

    Args:
        module: the layer whose weight to normalize.
        name: the weight's name (default "weight").
        n_power_iterations: power-iteration steps per training forward (default 1).
        eps: floor of the norms when normalizing u and v (default 1e-12).
        dim: the output dimension of the weight (default 0).
    """

    def __init__(
        self, module: Any, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12, dim: int = 0
    ) -> None:
        object.__setattr__(
            self,
            "n_power_iterations",
            check_positive_int("n_power_iterations", n_power_iterations, "SpectralNorm"),
        )
        object.__setattr__(self, "eps", float(eps))
        object.__setattr__(self, "dim", dim)
        super().__init__(module, name)

    def _take_over(self, weight: Any) -> None:
        self._parameters[f"{self.name}_orig"] = Parameter(weight)
        shape = tuple(weight.shape)
        h = shape[self.dim]
        w = int(np.prod(shape)) // h
        rng = get_rng()
        u, v = rng.standard_normal(h), rng.standard_normal(w)
        self.register_buffer(f"{self.name}_u", self._const(u / max(np.linalg.norm(u), self.eps)))
        self.register_buffer(f"{self.name}_v", self._const(v / max(np.linalg.norm(v), self.eps)))

    def _matrix(self, weight: Any) -> Any:
        if self.dim != 0:
            axes = [self.dim, *(a for a in range(weight.ndim) if a != self.dim)]
            weight = weight.transpose(*axes)
        return weight.reshape(weight.shape[0], -1)

    def _normalized(self, vector: Any) -> Any:
        xp = self.xp
        return vector / xp.maximum(xp.sqrt(xp.sum(vector * vector)), self.eps)

    def _effective_weight(self) -> Any:
        weight = self._parameters[f"{self.name}_orig"].data
        matrix = self._matrix(weight)
        u, v = self._buffers[f"{self.name}_u"], self._buffers[f"{self.name}_v"]
        if self.training:
            for _ in range(self.n_power_iterations):
                v = self._normalized(matrix.T @ u)
                u = self._normalized(matrix @ v)
            self._buffers[f"{self.name}_u"], self._buffers[f"{self.name}_v"] = u, v
        sigma = self.xp.sum(u * (matrix @ v))
        object.__setattr__(self, "_sigma_uv", (sigma, u, v))
        return weight / sigma

    def _weight_backward(self, grad_weight: Any) -> None:
        # d(W/sigma)/dW with sigma = u^T W v and u, v constant:
        #   dL/dW = G / sigma - <G, W> / sigma^2 * u v^T
        sigma, u, v = self._sigma_uv
        orig = self._parameters[f"{self.name}_orig"]
        inner = self.xp.sum(grad_weight * orig.data)
        outer = (u.reshape(-1, 1) * v.reshape(1, -1)).reshape(self._matrix(orig.data).shape)
        if self.dim != 0:
            shape = tuple(orig.data.shape)
            moved = (shape[self.dim], *(s for a, s in enumerate(shape) if a != self.dim))
            outer = outer.reshape(moved)
            inverse = list(np.argsort([self.dim, *(a for a in range(len(shape)) if a != self.dim)]))
            outer = outer.transpose(*inverse)
        self._accumulate(
            orig, grad_weight / sigma - (inner / (sigma * sigma)) * outer.reshape(orig.data.shape)
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, n_power_iterations={self.n_power_iterations}, eps={self.eps}, dim={self.dim}"


def spectral_norm(
    module: Any, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12, dim: int = 0
) -> SpectralNorm:
    """Apply spectral normalization to ``module.<name>`` (as ``torch.nn.utils.spectral_norm``)."""
    return SpectralNorm(module, name, n_power_iterations, eps, dim)
