"""Model builders for the experiments: a multi-layer perceptron with a choice of normalization.

>>> import dualnorm
>>> from dualnorm.models import mlp
>>> model = mlp(64, [32, 32], 10, activation="relu", norm="batch")
>>> [type(m).__name__ for m in model]
['Linear', 'BatchNorm1d', 'ReLU', 'Linear', 'BatchNorm1d', 'ReLU', 'Linear']
"""

from __future__ import annotations

from collections.abc import Sequence

from dualnorm import init as dinit
from dualnorm import nn
from dualnorm.errors import InputError

__all__ = ["ACTIVATIONS", "NORMS", "make_activation", "make_norm", "mlp"]

NORMS = ("none", "batch", "layer", "group", "rms", "weight", "spectral", "batch-renorm")
"""Normalization kinds :func:`mlp` puts after each hidden Affine (weight/spectral wrap the Affine).

Instance norm and local response norm are not offered for an MLP: on (N, features) input
instance norm sees one value per (sample, channel) and outputs zeros, and LRN needs
channels with spatial extent. Group norm with one group per feature would do the same;
``groups`` (default 4) must divide the width.
"""

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "selu", "identity")
"""Activation names :func:`mlp` and :func:`make_activation` accept."""


def make_activation(name: str) -> nn.Module:
    """A new activation layer by name, one of :data:`ACTIVATIONS`."""
    table = {
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "selu": nn.SELU,
        "identity": nn.Identity,
    }
    if name not in table:
        raise InputError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return table[name]()


def make_norm(kind: str, width: int, *, groups: int = 4, eps: float | None = None) -> nn.Module | None:
    """The normalization layer placed after an Affine of ``width`` outputs (None for none/weight/spectral)."""
    kw = {} if eps is None else {"eps": eps}
    if kind in ("none", "weight", "spectral"):
        return None
    if kind == "batch":
        return nn.BatchNorm1d(width, **kw)
    if kind == "batch-renorm":
        return nn.BatchRenorm1d(width, **kw)
    if kind == "layer":
        return nn.LayerNorm(width, **kw)
    if kind == "group":
        return nn.GroupNorm(groups, width, **kw)
    if kind == "rms":
        return nn.RMSNorm(width, **kw)
    raise InputError(f"unknown normalization {kind!r}; choose one of: {', '.join(NORMS)}")


def mlp(
    in_features: int,
    hidden_sizes: Sequence[int],
    out_features: int,
    *,
    activation: str = "relu",
    norm: str = "none",
    init: str = "default",
    init_std: float = 0.01,
    groups: int = 4,
    norm_eps: float | None = None,
    bias: bool = True,
) -> nn.Sequential:
    """``[Affine -> norm -> activation] * len(hidden_sizes) -> Affine`` as one flat Sequential.

    Args:
        norm: one of :data:`NORMS`; "weight"/"spectral" reparametrize each hidden Affine's
            weight instead of adding a layer.
        init: a scheme of :func:`dualnorm.init.init_weights` for every Affine ("normal" uses
            ``init_std``: the documents' ``weight_init_std``); "default" keeps PyTorch's init.
    The children are named "0", "1", ... in order (PyTorch's Sequential names).
    """
    if norm not in NORMS:
        raise InputError(f"unknown normalization {norm!r}; choose one of: {', '.join(NORMS)}")
    if activation not in ACTIVATIONS:
        raise InputError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden_sizes:
        affine = nn.Linear(width, size, bias=bias)
        dinit.init_weights(affine, init, std=init_std, activation=activation)
        if norm == "weight":
            affine = nn.utils.weight_norm(affine)
        elif norm == "spectral":
            affine = nn.utils.spectral_norm(affine)
        layers.append(affine)
        norm_layer = make_norm(norm, size, groups=groups, eps=norm_eps)
        if norm_layer is not None:
            layers.append(norm_layer)
        layers.append(make_activation(activation))
        width = size
    head = nn.Linear(width, out_features, bias=bias)
    dinit.init_weights(head, init, std=init_std, activation="linear")
    layers.append(head)
    return nn.Sequential(*layers)
