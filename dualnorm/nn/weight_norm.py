"""Weight normalization (Salimans & Kingma 2016): a weight's direction and length, learned apart.

::

    weight = g * v / ||v||        (norm over every dimension except ``dim``)

The wrapped module keeps working as before; its ``weight`` parameter is replaced by
``weight_g`` (the length, shape (out, 1, ...)) and ``weight_v`` (the direction), the
key names of ``torch.nn.utils.weight_norm``, so state dicts move between the two.
"""

from __future__ import annotations

from typing import Any

from dualnorm.errors import InputError, RuntimeInputError
from dualnorm.nn.module import Module, Parameter


def _norm_axes(ndim: int, dim: int | None) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(ndim))
    return tuple(a for a in range(ndim) if a != dim % ndim)


def _reparametrized(module: Module, name: str) -> bool:
    """True when ``module.<name>`` is already computed by a weight/spectral norm wrapper."""
    if isinstance(module, _ReparametrizedWeight) and module.name == name:
        return True  # the wrapper itself
    # A wrapped module keeps its effective weight as a plain attribute, not a parameter.
    return name not in module._parameters and isinstance(module.__dict__.get(name), Parameter)


class _ReparametrizedWeight(Module):
    """Shared plumbing: take over ``module.<name>`` and present the module's other parameters unprefixed."""

    def __init__(self, module: Module, name: str) -> None:
        if not isinstance(module, Module):
            raise InputError(f"{type(self).__name__} wraps a dualnorm module, got {type(module).__name__}")
        if _reparametrized(module, name):
            # PyTorch raises a RuntimeError here ("Cannot register two ... hooks on the same parameter").
            raise RuntimeInputError(
                f"{type(self).__name__}: {type(module).__name__}.{name} is already reparametrized (weight_norm "
                "or spectral_norm was applied to it); apply one of them once, to the original module."
            )
        if name not in module._parameters:
            raise InputError(
                f"{type(self).__name__}: {type(module).__name__} has no parameter {name!r}; "
                f"it has {list(module._parameters)}"
            )
        super().__init__()
        object.__setattr__(self, "backend", module.backend)
        object.__setattr__(self, "dtype", module.dtype)
        object.__setattr__(self, "name", name)
        weight = module._parameters.pop(name)
        # The effective weight is recomputed every forward; it is not a learnable parameter.
        object.__setattr__(module, name, Parameter(weight.data))
        self._modules[""] = module  # empty name: the module's keys keep their own names
        self._take_over(weight.data)

    def _take_over(self, weight: Any) -> None:
        raise NotImplementedError

    @property
    def module(self) -> Module:
        return self._modules[""]

    def _effective_weight(self) -> Any:
        raise NotImplementedError

    def _weight_backward(self, grad_weight: Any) -> None:
        raise NotImplementedError

    def forward(self, x: Any) -> Any:
        weight = getattr(self.module, self.name)
        buffers, before = dict(self._buffers), weight.data
        try:
            weight.data = self._effective_weight()
            return self.module(x)
        except Exception:
            # An input the wrapped layer refuses leaves everything as it was (spectral norm's u, v too).
            self._buffers.update(buffers)
            weight.data = before
            raise

    def backward(self, grad_output: Any) -> Any:
        grad_input = self.module.backward(grad_output)
        weight = getattr(self.module, self.name)
        if weight.grad is not None:
            self._weight_backward(weight.grad)
            weight.grad = None
        return grad_input

    def train(self, mode: bool = True) -> Module:
        super().train(mode)
        return self

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


class WeightNorm(_ReparametrizedWeight):
    """Weight normalization of ``module.<name>``; prefer the :func:`weight_norm` function.

    >>> import numpy as np, dualnorm
    >>> layer = dualnorm.nn.utils.weight_norm(dualnorm.nn.Linear(3, 2))
    >>> sorted(layer.state_dict())
    ['bias', 'weight_g', 'weight_v']
    """

    def __init__(self, module: Module, name: str = "weight", dim: int | None = 0) -> None:
        object.__setattr__(self, "dim", dim)
        super().__init__(module, name)

    def _take_over(self, weight: Any) -> None:
        axes = _norm_axes(weight.ndim, self.dim)
        g = self.xp.sqrt(self.xp.sum(weight * weight, axis=axes, keepdims=True))
        if self.dim is None:
            g = g.reshape(())
        self._parameters[f"{self.name}_g"] = Parameter(g)
        self._parameters[f"{self.name}_v"] = Parameter(weight)

    def _gv(self) -> tuple[Parameter, Parameter, Any, tuple[int, ...]]:
        g = self._parameters[f"{self.name}_g"]
        v = self._parameters[f"{self.name}_v"]
        axes = _norm_axes(v.data.ndim, self.dim)
        norm = self.xp.sqrt(self.xp.sum(v.data * v.data, axis=axes, keepdims=True))
        return g, v, norm, axes

    def _effective_weight(self) -> Any:
        g, v, norm, _ = self._gv()
        return v.data * (g.data / norm)

    def _weight_backward(self, grad_weight: Any) -> None:
        g, v, norm, axes = self._gv()
        grad_g = self.xp.sum(grad_weight * v.data, axis=axes, keepdims=True) / norm
        grad_v = (g.data / norm) * (grad_weight - (grad_g / norm) * v.data)
        self._accumulate(g, grad_g.reshape(g.data.shape))
        self._accumulate(v, grad_v)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}"


def weight_norm(module: Module, name: str = "weight", dim: int | None = 0) -> WeightNorm:
    """Apply weight normalization to ``module.<name>`` (as ``torch.nn.utils.weight_norm``).

    Returns a wrapper module to use in place of ``module``.
    """
    return WeightNorm(module, name, dim)
