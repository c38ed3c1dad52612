"""Every layer kind with a matching input shape and its torch.nn twin, for checkpoint tests.

(Not named helpers.py: test directories have no __init__.py, so module names must be unique.)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import dualnorm
from dualnorm import nn


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], nn.Module]  # builds the dualnorm layer on the active backend
    shape: tuple[int, ...]  # input shape
    make_torch: Callable[[Any], Any] | None = None  # torch module -> torch twin; None: no twin


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _torch_mlp(torch: Any) -> Any:
    t = torch.nn
    return t.Sequential(t.Linear(5, 8), t.BatchNorm1d(8), t.ReLU(), t.Linear(8, 3))


def _torch_weight_norm(torch: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated, its keys are not
        return torch.nn.utils.weight_norm(torch.nn.Linear(5, 3))


CASES = [
    Case("BatchNorm1d", lambda: nn.BatchNorm1d(4), (8, 4), lambda t: t.nn.BatchNorm1d(4)),
    Case(
        "BatchNorm1d-NCL",
        lambda: nn.BatchNorm1d(3, momentum=None),
        (4, 3, 5),
        lambda t: t.nn.BatchNorm1d(3, momentum=None),
    ),
    Case("BatchNorm2d", lambda: nn.BatchNorm2d(3), (4, 3, 5, 5), lambda t: t.nn.BatchNorm2d(3)),
    Case("BatchNorm3d", lambda: nn.BatchNorm3d(2), (3, 2, 3, 4, 4), lambda t: t.nn.BatchNorm3d(2)),
    Case("BatchRenorm1d", lambda: nn.BatchRenorm1d(4), (8, 4), None),
    Case("LayerNorm", lambda: nn.LayerNorm((4, 5)), (3, 4, 5), lambda t: t.nn.LayerNorm((4, 5))),
    Case("GroupNorm", lambda: nn.GroupNorm(2, 6), (4, 6, 5), lambda t: t.nn.GroupNorm(2, 6)),
    Case(
        "InstanceNorm1d",
        lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True),
        (4, 3, 7),
        lambda t: t.nn.InstanceNorm1d(3, affine=True, track_running_stats=True),
    ),
    Case(
        "InstanceNorm2d",
        lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
        (2, 3, 4, 4),
        lambda t: t.nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
    ),
    Case("RMSNorm", lambda: nn.RMSNorm(6), (4, 6), lambda t: t.nn.RMSNorm(6)),
    Case(
        "LocalResponseNorm",
        lambda: nn.LocalResponseNorm(3),
        (2, 6, 4, 4),
        lambda t: t.nn.LocalResponseNorm(3),
    ),
    Case("Linear", lambda: nn.Linear(5, 3), (4, 5), lambda t: t.nn.Linear(5, 3)),
    Case("weight_norm", lambda: nn.utils.weight_norm(nn.Linear(5, 3)), (4, 5), _torch_weight_norm),
    Case(
        "spectral_norm",
        lambda: nn.utils.spectral_norm(nn.Linear(5, 3)),
        (4, 5),
        lambda t: t.nn.utils.spectral_norm(t.nn.Linear(5, 3)),
    ),
    Case("MLP-with-BN", _mlp, (6, 5), _torch_mlp),
]
CASE_IDS = [c.name for c in CASES]
TORCH_CASES = [c for c in CASES if c.make_torch is not None]


def inputs(shape: tuple[int, ...], seed: int, n: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) * 2.0 + 0.5).astype(np.float32) for _ in range(n)]


def train_a_little(module: nn.Module, shape: tuple[int, ...], steps: int = 3, seed: int = 7) -> None:
    """A few SGD steps on random gradients: parameters and running statistics become non-trivial."""
    rng = np.random.default_rng(seed)
    module.train()
    for x in inputs(shape, seed, steps):
        y = module(x)
        grad = rng.standard_normal(tuple(y.shape)).astype(np.float32)
        module.backward(grad)
        for param in module.parameters():
            if param.grad is not None:
                param.data = param.data - 0.1 * param.grad
        module.zero_grad()


def state(module: Any) -> dict[str, np.ndarray]:
    """A NumPy copy of a dualnorm or torch module's state dict."""
    out = {}
    for key, value in module.state_dict().items():
        if hasattr(value, "detach"):
            out[key] = value.detach().cpu().numpy().copy()
        else:
            out[key] = np.array(dualnorm.to_numpy(value), copy=True)
    return out


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, exact: bool = True) -> None:
    assert list(a) == list(b) or sorted(a) == sorted(b), (sorted(a), sorted(b))
    for key in a:
        assert a[key].shape == b[key].shape, key
        if exact:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            assert a[key].dtype == b[key].dtype, (key, a[key].dtype, b[key].dtype)
        else:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
