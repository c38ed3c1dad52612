"""Learning-rate schedulers with PyTorch's semantics: ``StepLR``, ``MultiStepLR``, ``CosineAnnealingLR``.

A scheduler wraps one of the optimizers in :mod:`dualnorm.optim` and sets its ``lr``. As in
``torch.optim.lr_scheduler``, building a scheduler takes its first step (``last_epoch``
becomes 0 and the lr is the optimizer's initial lr); call ``scheduler.step()`` once per
epoch, *after* ``optimizer.step()``. The updates are PyTorch's chainable ones (each
multiplies the current lr), so the sequences of learning rates match PyTorch's float for
float, including when something else changes the lr in between.

>>> import numpy as np, dualnorm
>>> from dualnorm.optim import SGD
>>> from dualnorm.lr_scheduler import StepLR
>>> with dualnorm.use_backend("numpy"):
...     layer = dualnorm.nn.Linear(1, 1)
>>> opt = SGD(layer.parameters(), lr=0.1, momentum=0.9)
>>> sched = StepLR(opt, step_size=7, gamma=0.1)      # the seed's schedule
>>> lrs = []
>>> for epoch in range(15):
...     lrs.append(round(sched.get_last_lr()[0], 6))
...     sched.step()
>>> lrs
[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.001]

dualnorm's optimizers have one learning rate (one parameter group), so ``get_last_lr()``
and ``base_lrs`` are one-element lists, as PyTorch's are for a single group.
``state_dict()`` holds the same keys as PyTorch's (``last_epoch``, ``base_lrs``,
``_step_count``, ``_last_lr`` and the scheduler's own arguments); ``load_state_dict``
accepts dualnorm's and PyTorch's, and sets the optimizer's lr to the saved last lr.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from dualnorm.errors import InputError
from dualnorm.optim import Optimizer

__all__ = ["CosineAnnealingLR", "LRScheduler", "MultiStepLR", "StepLR"]


def _int(owner: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _number(owner: str, name: str, value: Any, minimum: float | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{owner}: {name} must be a number, got {value!r}", type_error=True) from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        bound = "" if minimum is None else f" >= {minimum:g}"
        raise InputError(f"{owner}: {name} must be a finite number{bound}, got {value!r}")
    return number


class LRScheduler:
    """Base class: holds the optimizer, ``base_lrs`` and ``last_epoch``; subclasses define ``get_lr``."""

    # Keys of state_dict() beyond the subclass's own arguments (PyTorch's names).
    _STATE_KEYS = ("base_lrs", "last_epoch", "_step_count", "_last_lr")
    _ARGS: tuple[str, ...] = ()

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        name = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise InputError(
                f"{name} takes a dualnorm optimizer (dualnorm.optim.SGD, Adam, AdamW), "
                f"got {type(optimizer).__name__}",
                type_error=True,
            )
        self.optimizer = optimizer
        last_epoch = _int(name, "last_epoch", last_epoch, -1)
        if last_epoch == -1:
            if getattr(optimizer, "initial_lr", None) is None:
                optimizer.initial_lr = optimizer.lr
        elif getattr(optimizer, "initial_lr", None) is None:
            raise InputError(
                f"{name}: last_epoch={last_epoch} resumes a schedule, but the optimizer has no initial_lr; "
                "build the scheduler with last_epoch=-1, or load its state_dict() instead"
            )
        self.base_lrs: list[float] = [float(optimizer.initial_lr)]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True
        self.step()
        self._is_initial = False

    def get_lr(self) -> list[float]:
        """The learning rate for ``last_epoch`` (chainable: computed from the current lr)."""
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The learning rate the last ``step()`` set (one per parameter group: one here)."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance one epoch and set the optimizer's lr. Call it after ``optimizer.step()``."""
        self._step_count += 1
        self.last_epoch += 1
        (lr,) = self.get_lr()
        self.optimizer.lr = lr
        self._last_lr = [self.optimizer.lr]

    @property
    def _current(self) -> float:
        return self.optimizer.lr

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state with PyTorch's keys (the optimizer is not included)."""
        state = {name: getattr(self, name) for name in self._ARGS}
        state.update({key: getattr(self, key) for key in self._STATE_KEYS})
        state["base_lrs"] = list(self.base_lrs)
        state["_last_lr"] = list(self._last_lr)
        if isinstance(state.get("milestones"), Counter):
            state["milestones"] = Counter(state["milestones"])
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (dualnorm's or PyTorch's); checked before anything changes."""
        name = type(self).__name__
        if not isinstance(state_dict, dict):
            raise InputError(
                f"{name}.load_state_dict takes a dict, got {type(state_dict).__name__}", type_error=True
            )
        needed = (*self._ARGS, *self._STATE_KEYS)
        missing = [k for k in needed if k not in state_dict]
        # PyTorch's state also holds private flags (_is_initial, _get_lr_called_within_step, verbose).
        unknown = [k for k in state_dict if k not in needed and not k.startswith("_") and k != "verbose"]
        if missing or unknown:
            raise InputError(
                f"{name}.load_state_dict: missing keys {missing}, unexpected keys {unknown}; "
                f"expected {list(needed)} (a state_dict() of the same scheduler class)"
            )
        lrs = {}
        for key in ("base_lrs", "_last_lr"):
            value = state_dict[key]
            if not isinstance(value, (list, tuple)) or len(value) != 1:
                raise InputError(
                    f"{name}.load_state_dict: {key} must be a list of one learning rate "
                    f"(dualnorm optimizers have one parameter group), got {value!r}"
                )
            lrs[key] = [_number(name, key, value[0], 0.0)]
        last_epoch = _int(name, "last_epoch", state_dict["last_epoch"], -1)
        step_count = _int(name, "_step_count", state_dict["_step_count"], 0)
        args = self._checked_args({k: state_dict[k] for k in self._ARGS})
        for key, value in args.items():
            setattr(self, key, value)
        self.base_lrs, self._last_lr = lrs["base_lrs"], lrs["_last_lr"]
        self.last_epoch, self._step_count = last_epoch, step_count
        self.optimizer.initial_lr = self.base_lrs[0]
        self.optimizer.lr = self._last_lr[0]

    def _checked_args(self, args: dict[str, Any]) -> dict[str, Any]:
        return args

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._ARGS)
        return f"{type(self).__name__}({args}, last_epoch={self.last_epoch})"


class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` epochs: ``lr = base_lr * gamma ** (epoch // step_size)``.

    ``StepLR(optimizer, step_size=7, gamma=0.1)`` is the schedule of the seed's fine-tuning example.
    """

    _ARGS = ("step_size", "gamma")

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        checked = self._checked_args({"step_size": step_size, "gamma": gamma})
        self.step_size, self.gamma = checked["step_size"], checked["gamma"]
        super().__init__(optimizer, last_epoch)

    def _checked_args(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "step_size": _int("StepLR", "step_size", args["step_size"], 1),
            "gamma": _number("StepLR", "gamma", args["gamma"], 0.0),
        }

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [self._current]
        return [self._current * self.gamma]


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` at each milestone epoch: ``lr = base_lr * gamma ** (milestones passed)``.

    A milestone listed twice decays twice, as in PyTorch.
    """

    _ARGS = ("milestones", "gamma")

    def __init__(
        self, optimizer: Optimizer, milestones: Iterable[int], gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        checked = self._checked_args({"milestones": milestones, "gamma": gamma})
        self.milestones, self.gamma = checked["milestones"], checked["gamma"]
        super().__init__(optimizer, last_epoch)

    def _checked_args(self, args: dict[str, Any]) -> dict[str, Any]:
        milestones = args["milestones"]
        try:
            items = list(milestones.elements() if isinstance(milestones, Counter) else milestones)
        except TypeError:
            raise InputError(
                f"MultiStepLR: milestones must be a list of epoch numbers, got {milestones!r}",
                type_error=True,
            ) from None
        for m in items:
            _int("MultiStepLR", "each milestone", m, 0)
        return {"milestones": Counter(items), "gamma": _number("MultiStepLR", "gamma", args["gamma"], 0.0)}

    def get_lr(self) -> list[float]:
        if self.last_epoch not in self.milestones:
            return [self._current]
        return [self._current * self.gamma ** self.milestones[self.last_epoch]]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the initial lr to ``eta_min`` over ``T_max`` epochs (SGDR without restarts)::

        lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2

    computed, as in PyTorch, by the recursive form (each step rescales the current lr), which
    equals the formula above when nothing else changes the lr. Past ``T_max`` the cosine goes
    on (the lr climbs back), as PyTorch's does.
    """

    _ARGS = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        checked = self._checked_args({"T_max": T_max, "eta_min": eta_min})
        self.T_max, self.eta_min = checked["T_max"], checked["eta_min"]
        super().__init__(optimizer, last_epoch)

    def _checked_args(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "T_max": _int("CosineAnnealingLR", "T_max", args["T_max"], 1),
            "eta_min": _number("CosineAnnealingLR", "eta_min", args["eta_min"], 0.0),
        }

    def get_lr(self) -> list[float]:
        epoch, t_max, eta_min, base = self.last_epoch, self.T_max, self.eta_min, self.base_lrs[0]
        if self._is_initial:
            return [self._current]
        if self._step_count == 1 and epoch > 0:
            return [eta_min + (base - eta_min) * (1 + math.cos(epoch * math.pi / t_max)) / 2]
        if (epoch - 1 - t_max) % (2 * t_max) == 0:  # the step where the recursive ratio is 0/0
            return [self._current + (base - eta_min) * (1 - math.cos(math.pi / t_max)) / 2]
        ratio = (1 + math.cos(math.pi * epoch / t_max)) / (1 + math.cos(math.pi * (epoch - 1) / t_max))
        return [ratio * (self._current - eta_min) + eta_min]
