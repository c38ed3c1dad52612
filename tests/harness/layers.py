"""Every layer of ``dualnorm.nn`` with a small configuration, its torch.nn twin and the input shapes it takes.

A shape template is a tuple of symbols: ``N`` batch (3), ``C``/``F`` the configured channel or
feature count (the only size the layer checks), ``S`` a free size (2). The odd inputs of
``inputs.py`` are made by bending a valid shape (``N`` -> 0, an ``S`` -> 0, ``C`` -> C + 1 ...).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dualnorm import nn


@dataclass(frozen=True)
class LayerConfig:
    id: str
    cls: type  # the dualnorm.nn class this configuration covers
    make: Callable[[str | None], nn.Module]  # make(dtype) on the active backend
    torch_expr: str | None  # a torch.nn expression with the same configuration, or None
    templates: tuple[tuple[str, ...], ...]
    size: int = 0  # the C/F size the layer was built for (0: the layer checks no size)

    def __repr__(self) -> str:
        return self.id

    def torch(self) -> Any:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
            return eval(self.torch_expr, {"torch": torch})


ELEMENTWISE = (("N", "S"), ("N", "S", "S"))
LINEAR = (("N", "F"), ("N", "S", "F"))


def _cfg(cid, cls, make, torch_expr, templates, size=0):
    return LayerConfig(cid, cls, make, torch_expr, templates, size)


CONFIGS: list[LayerConfig] = [
    _cfg(
        "BatchNorm1d",
        nn.BatchNorm1d,
        lambda d: nn.BatchNorm1d(3, dtype=d),
        "torch.nn.BatchNorm1d(3)",
        (("N", "C"), ("N", "C", "S")),
        3,
    ),
    _cfg(
        "BatchNorm2d",
        nn.BatchNorm2d,
        lambda d: nn.BatchNorm2d(3, dtype=d),
        "torch.nn.BatchNorm2d(3)",
        (("N", "C", "S", "S"),),
        3,
    ),
    _cfg(
        "BatchNorm3d",
        nn.BatchNorm3d,
        lambda d: nn.BatchNorm3d(2, dtype=d),
        "torch.nn.BatchNorm3d(2)",
        (("N", "C", "S", "S", "S"),),
        2,
    ),
    # rmax=1, dmax=0 is exactly batch norm (Ioffe 2017), so torch's BatchNorm is the oracle.
    _cfg(
        "BatchRenorm1d",
        nn.BatchRenorm1d,
        lambda d: nn.BatchRenorm1d(3, rmax=1.0, dmax=0.0, dtype=d),
        "torch.nn.BatchNorm1d(3)",
        (("N", "C"), ("N", "C", "S")),
        3,
    ),
    _cfg(
        "BatchRenorm2d",
        nn.BatchRenorm2d,
        lambda d: nn.BatchRenorm2d(3, rmax=1.0, dmax=0.0, dtype=d),
        "torch.nn.BatchNorm2d(3)",
        (("N", "C", "S", "S"),),
        3,
    ),
    _cfg(
        "SyncBatchNorm",
        nn.SyncBatchNorm,
        lambda d: nn.SyncBatchNorm(3, dtype=d),
        "torch.nn.SyncBatchNorm(3)",
        (("N", "C"), ("N", "C", "S"), ("N", "C", "S", "S")),
        3,
    ),
    _cfg(
        "GroupNorm",
        nn.GroupNorm,
        lambda d: nn.GroupNorm(2, 4, dtype=d),
        "torch.nn.GroupNorm(2, 4)",
        (("N", "C"), ("N", "C", "S"), ("N", "C", "S", "S")),
        4,
    ),
    _cfg(
        "InstanceNorm1d",
        nn.InstanceNorm1d,
        lambda d: nn.InstanceNorm1d(3, dtype=d),
        "torch.nn.InstanceNorm1d(3)",
        (("N", "C", "S"), ("C", "S")),
        3,
    ),
    _cfg(
        "InstanceNorm1d-tracked",
        nn.InstanceNorm1d,
        lambda d: nn.InstanceNorm1d(3, affine=True, track_running_stats=True, dtype=d),
        "torch.nn.InstanceNorm1d(3, affine=True, track_running_stats=True)",
        (("N", "C", "S"), ("C", "S")),
        3,
    ),
    _cfg(
        "InstanceNorm2d",
        nn.InstanceNorm2d,
        lambda d: nn.InstanceNorm2d(3, dtype=d),
        "torch.nn.InstanceNorm2d(3)",
        (("N", "C", "S", "S"), ("C", "S", "S")),
        3,
    ),
    _cfg(
        "InstanceNorm3d",
        nn.InstanceNorm3d,
        lambda d: nn.InstanceNorm3d(3, affine=True, dtype=d),
        "torch.nn.InstanceNorm3d(3, affine=True)",
        (("N", "C", "S", "S", "S"), ("C", "S", "S", "S")),
        3,
    ),
    _cfg("LayerNorm", nn.LayerNorm, lambda d: nn.LayerNorm(4, dtype=d), "torch.nn.LayerNorm(4)", LINEAR, 4),
    _cfg("RMSNorm", nn.RMSNorm, lambda d: nn.RMSNorm(4, dtype=d), "torch.nn.RMSNorm(4)", LINEAR, 4),
    _cfg(
        "LocalResponseNorm",
        nn.LocalResponseNorm,
        lambda d: nn.LocalResponseNorm(3, dtype=d),
        "torch.nn.LocalResponseNorm(3)",
        (("N", "S", "S"), ("N", "S", "S", "S")),
    ),
    _cfg("Linear", nn.Linear, lambda d: nn.Linear(4, 3, dtype=d), "torch.nn.Linear(4, 3)", LINEAR, 4),
    _cfg(
        "WeightNorm",
        nn.WeightNorm,
        lambda d: nn.utils.weight_norm(nn.Linear(4, 3, dtype=d)),
        "torch.nn.utils.weight_norm(torch.nn.Linear(4, 3))",
        LINEAR,
        4,
    ),
    _cfg(
        "SpectralNorm",
        nn.SpectralNorm,
        lambda d: nn.utils.spectral_norm(nn.Linear(4, 3, dtype=d)),
        "torch.nn.utils.spectral_norm(torch.nn.Linear(4, 3))",
        LINEAR,
        4,
    ),
    _cfg(
        "Sequential",
        nn.Sequential,
        # Tanh, not ReLU: on degenerate batches BN's output is rounding noise around 0, whose sign
        # would decide ReLU's gradient (ReLU itself is covered on its own).
        lambda d: nn.Sequential(nn.Linear(4, 3, dtype=d), nn.BatchNorm1d(3, dtype=d), nn.Tanh(dtype=d)),
        "torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Tanh())",
        (("N", "F"),),
        4,
    ),
    _cfg("ReLU", nn.ReLU, lambda d: nn.ReLU(dtype=d), "torch.nn.ReLU()", ELEMENTWISE),
    _cfg("LeakyReLU", nn.LeakyReLU, lambda d: nn.LeakyReLU(dtype=d), "torch.nn.LeakyReLU()", ELEMENTWISE),
    _cfg("Sigmoid", nn.Sigmoid, lambda d: nn.Sigmoid(dtype=d), "torch.nn.Sigmoid()", ELEMENTWISE),
    _cfg("Tanh", nn.Tanh, lambda d: nn.Tanh(dtype=d), "torch.nn.Tanh()", ELEMENTWISE),
    _cfg("SELU", nn.SELU, lambda d: nn.SELU(dtype=d), "torch.nn.SELU()", ELEMENTWISE),
    _cfg("Identity", nn.Identity, lambda d: nn.Identity(dtype=d), "torch.nn.Identity()", ELEMENTWISE),
    _cfg(
        "Flatten",
        nn.Flatten,
        lambda d: nn.Flatten(dtype=d),
        "torch.nn.Flatten()",
        (("N", "S"), ("N", "S", "S")),
    ),
    # pooling and dropout (Dropout with p = 0: torch's random mask cannot be the oracle otherwise)
    _cfg(
        "MaxPool1d",
        nn.MaxPool1d,
        lambda d: nn.MaxPool1d(2, dtype=d),
        "torch.nn.MaxPool1d(2)",
        (("N", "S", "S"), ("S", "S")),
    ),
    _cfg(
        "MaxPool2d",
        nn.MaxPool2d,
        lambda d: nn.MaxPool2d(2, stride=1, padding=1, dtype=d),
        "torch.nn.MaxPool2d(2, stride=1, padding=1)",
        (("N", "S", "S", "S"), ("S", "S", "S")),
    ),
    _cfg(
        "AvgPool1d",
        nn.AvgPool1d,
        lambda d: nn.AvgPool1d(2, dtype=d),
        "torch.nn.AvgPool1d(2)",
        (("N", "S", "S"), ("S", "S")),
    ),
    _cfg(
        "AvgPool2d",
        nn.AvgPool2d,
        lambda d: nn.AvgPool2d(2, padding=1, count_include_pad=False, dtype=d),
        "torch.nn.AvgPool2d(2, padding=1, count_include_pad=False)",
        (("N", "S", "S", "S"), ("S", "S", "S")),
    ),
    _cfg(
        "AdaptiveAvgPool1d",
        nn.AdaptiveAvgPool1d,
        lambda d: nn.AdaptiveAvgPool1d(3, dtype=d),
        "torch.nn.AdaptiveAvgPool1d(3)",
        (("N", "S", "S"), ("S", "S")),
    ),
    _cfg(
        "AdaptiveAvgPool2d",
        nn.AdaptiveAvgPool2d,
        lambda d: nn.AdaptiveAvgPool2d((3, None), dtype=d),
        "torch.nn.AdaptiveAvgPool2d((3, None))",
        (("N", "S", "S", "S"), ("S", "S", "S")),
    ),
    _cfg("Dropout", nn.Dropout, lambda d: nn.Dropout(0.0, dtype=d), "torch.nn.Dropout(0.0)", ELEMENTWISE),
    _cfg(
        "Dropout2d",
        nn.Dropout2d,
        lambda d: nn.Dropout2d(0.0, dtype=d),
        "torch.nn.Dropout2d(0.0)",
        (("N", "S", "S", "S"),),
    ),
]

# Classes of dualnorm.nn.__all__ that are not layers one calls on data.
NOT_LAYERS = {"Module", "Parameter"}


def public_layer_classes() -> dict[str, type]:
    """Every Module subclass that dualnorm.nn exports, by name: a new layer shows up here by itself."""
    found = {}
    for name in nn.__all__:
        obj = getattr(nn, name)
        if isinstance(obj, type) and issubclass(obj, nn.Module) and name not in NOT_LAYERS:
            found[name] = obj
    return found
