"""Optimizers with PyTorch's update rules: SGD, Adam, AdamW.

They update :class:`dualnorm.nn.Parameter` objects from their accumulated ``.grad``
(parameters whose ``grad`` is None are skipped, as in PyTorch) and work on every
backend: the math uses only arithmetic operators and ``backend.xp.sqrt``.

Updates replace ``param.data`` with a new array (never in place), so arrays that a
layer saved for its backward pass are never changed under it.

>>> import numpy as np, dualnorm
>>> from dualnorm.optim import SGD
>>> with dualnorm.use_backend("numpy"):
...     layer = dualnorm.nn.Linear(1, 1, bias=False)
>>> layer.weight.data = np.array([[1.0]])
>>> layer.weight.grad = np.array([[0.5]])
>>> SGD(layer.parameters(), lr=0.1).step()
>>> float(layer.weight.data[0, 0])
0.95
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from dualnorm.backends import backend_of
from dualnorm.errors import InputError
from dualnorm.nn.module import Parameter

__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]


class Optimizer:
    """Base class: holds the parameters and per-parameter state."""

    def __init__(self, params: Iterable[Parameter], defaults: dict[str, Any]) -> None:
        self.params: list[Parameter] = list(params)
        if not self.params:
            raise InputError(f"{type(self).__name__} got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise InputError(
                    f"{type(self).__name__} takes dualnorm Parameters (model.parameters()), "
                    f"got a {type(p).__name__}"
                )
        self.defaults = defaults
        self.state: list[dict[str, Any]] = [{} for _ in self.params]

    @property
    def lr(self) -> float:
        """The learning rate; assign to change it (e.g. for a schedule)."""
        return self.defaults["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.defaults["lr"] = _check_non_negative("lr", value, type(self).__name__)

    def zero_grad(self) -> None:
        """Set the ``.grad`` of every parameter to None."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a ``.grad``, by the optimizer's rule."""
        raise NotImplementedError

    def state_arrays(self) -> list[Any]:
        """Every backend array the optimizer keeps (for ``backend.eval`` on lazy backends)."""
        return [v for st in self.state for v in st.values() if hasattr(v, "shape")]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({args})"


def _check_non_negative(name: str, value: Any, owner: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{owner}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{owner}: {name} must be a finite number >= 0, got {value!r}")
    return value


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, exactly as ``torch.optim.SGD``::

    g = grad + weight_decay * p
    buf = g                                    (first step)
    buf = momentum * buf + (1 - dampening) * g (later steps)
    g = g + momentum * buf if nesterov else buf
    p = p - lr * g
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        name = "SGD"
        defaults = {
            "lr": _check_non_negative("lr", lr, name),
            "momentum": _check_non_negative("momentum", momentum, name),
            "dampening": float(dampening),
            "weight_decay": _check_non_negative("weight_decay", weight_decay, name),
            "nesterov": bool(nesterov),
            "maximize": bool(maximize),
        }
        if nesterov and (defaults["momentum"] <= 0 or defaults["dampening"] != 0):
            raise InputError("SGD: Nesterov momentum requires a momentum > 0 and zero dampening")
        super().__init__(params, defaults)

    def step(self) -> None:
        d = self.defaults
        lr, momentum, dampening, wd = d["lr"], d["momentum"], d["dampening"], d["weight_decay"]
        for p, st in zip(self.params, self.state, strict=True):
            g = p.grad
            if g is None:
                continue
            if d["maximize"]:
                g = -g
            if wd:
                g = g + wd * p.data
            if momentum:
                buf = st.get("momentum_buffer")
                buf = g if buf is None else momentum * buf + (1.0 - dampening) * g
                st["momentum_buffer"] = buf
                g = g + momentum * buf if d["nesterov"] else buf
            p.data = p.data - lr * g


class Adam(Optimizer):
    """Adam with PyTorch's defaults and bias correction (``torch.optim.Adam``)::

        g = grad + weight_decay * p
        m = b1 * m + (1 - b1) * g ;  v = b2 * v + (1 - b2) * g^2
        v_max = max(v_max, v)                        (amsgrad)
        p = p - lr / (1 - b1^t) * m / (sqrt(v or v_max) / sqrt(1 - b2^t) + eps)

    MLX's ``optim.Adam`` skips the bias correction by default; this one always applies it.
    """

    _decoupled = False

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        name = type(self).__name__
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise InputError(f"{name}: betas must each be in [0, 1), got {betas!r}")
        defaults = {
            "lr": _check_non_negative("lr", lr, name),
            "betas": (b1, b2),
            "eps": _check_non_negative("eps", eps, name),
            "weight_decay": _check_non_negative("weight_decay", weight_decay, name),
            "amsgrad": bool(amsgrad),
            "maximize": bool(maximize),
        }
        super().__init__(params, defaults)

    def step(self) -> None:
        d = self.defaults
        lr, (b1, b2), eps, wd = d["lr"], d["betas"], d["eps"], d["weight_decay"]
        for p, st in zip(self.params, self.state, strict=True):
            g = p.grad
            if g is None:
                continue
            if d["maximize"]:
                g = -g
            if wd:
                if self._decoupled:
                    p.data = p.data * (1.0 - lr * wd)
                else:
                    g = g + wd * p.data
            t = st.get("step", 0) + 1
            st["step"] = t
            m = st.get("exp_avg")
            v = st.get("exp_avg_sq")
            m = (1.0 - b1) * g if m is None else b1 * m + (1.0 - b1) * g
            v = (1.0 - b2) * (g * g) if v is None else b2 * v + (1.0 - b2) * (g * g)
            st["exp_avg"], st["exp_avg_sq"] = m, v
            xp = backend_of(v).xp
            if d["amsgrad"]:
                vmax = st.get("max_exp_avg_sq")
                vmax = v if vmax is None else xp.maximum(vmax, v)
                st["max_exp_avg_sq"] = vmax
                v = vmax
            bias1 = 1.0 - b1**t
            bias2_sqrt = math.sqrt(1.0 - b2**t)
            denom = xp.sqrt(v) / bias2_sqrt + eps
            p.data = p.data - (lr / bias1) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``, default weight_decay 1e-2)."""

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)
