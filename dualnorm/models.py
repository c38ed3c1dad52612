"""Model builders for the experiments: a multi-layer perceptron and two small CNNs, each with a
choice of normalization.

>>> import dualnorm
>>> from dualnorm.models import mlp
>>> model = mlp(64, [32, 32], 10, activation="relu", norm="batch")
>>> [type(m).__name__ for m in model]
['Linear', 'BatchNorm1d', 'ReLU', 'Linear', 'BatchNorm1d', 'ReLU', 'Linear']
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from dualnorm import init as dinit
from dualnorm import nn
from dualnorm.errors import InputError

__all__ = [
    "ACTIVATIONS",
    "CNN_NORMS",
    "NORMS",
    "SimpleCNN",
    "digits_cnn",
    "make_activation",
    "make_conv_norm",
    "make_norm",
    "mlp",
    "simple_cnn",
]

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


# --- convolutional networks ---------------------------------------------------------------------

CNN_NORMS = ("lrn", "batch", "group", "instance", "layer", None)
"""Normalization kinds of the CNN builders, placed after each convolution:

* ``"lrn"``: ``LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)``, the seed's (note k = 2, not
  PyTorch's default 1);
* ``"batch"``: ``BatchNorm2d(C)``;
* ``"group"``: ``GroupNorm(groups, C)``;
* ``"instance"``: ``InstanceNorm2d(C, affine=True)`` (learned gamma/beta, as the other norms have);
* ``"layer"``: ``GroupNorm(1, C)``: layer norm over (C, H, W) with a gamma/beta per channel, the
  form Wu & He compare (a ``LayerNorm([C, H, W])`` would fix the image size);
* ``None`` (or ``"none"``): no normalization.
"""

_CNN_NORM_PREFIX = {"lrn": "lrn", "batch": "bn", "group": "gn", "instance": "inorm", "layer": "ln"}


def _cnn_norm_kind(norm: str | None) -> str | None:
    if norm in (None, "none"):
        return None
    if norm not in CNN_NORMS:
        names = ", ".join(repr(n) for n in CNN_NORMS)
        raise InputError(f"unknown normalization {norm!r} for a CNN; choose one of: {names}")
    return norm


def make_conv_norm(kind: str | None, channels: int, *, groups: int = 8) -> nn.Module | None:
    """The normalization layer after a convolution of ``channels`` outputs (see :data:`CNN_NORMS`)."""
    kind = _cnn_norm_kind(kind)
    if kind is None:
        return None
    if kind == "lrn":
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    num_groups = 1 if kind == "layer" else groups
    if channels % num_groups:
        raise InputError(
            f"GroupNorm with {num_groups} groups needs a channel count divisible by it; "
            f"a convolution has {channels} channels (pass groups= a divisor of every width)"
        )
    return nn.GroupNorm(num_groups, channels)


class SimpleCNN(nn.Sequential):
    """The seed's ``SimpleCNN`` (note 001), layer for layer, as one flat Sequential with its names.

    ``conv1, lrn1, pool1, conv2, ... fc1, fc2`` are the seed's attribute names, so the
    ``state_dict`` keys (``conv1.weight`` ... ``fc2.bias``) are the ones its PyTorch module has
    and the weights load into it and back. The ReLUs the seed calls as functions are modules
    here (``relu1`` ...), and so is its ``x.view(-1, 2048)`` (``flatten``); they hold no state.
    Build it with :func:`simple_cnn`.
    """


def simple_cnn(
    norm: str | None = "lrn",
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    widths: Sequence[int] = (32, 64, 128),
    hidden: int = 256,
    groups: int = 8,
) -> SimpleCNN:
    """The seed's SimpleCNN: three blocks ``Conv2d(3x3, padding 1) -> norm -> ReLU -> MaxPool2d(2, 2)``
    (3 -> 32 -> 64 -> 128 channels), then ``Linear(128*4*4, 256) -> ReLU -> Linear(256, 10)``.

    ``norm`` is one of :data:`CNN_NORMS`; the seed's is ``"lrn"``. Its norm layers are named
    ``lrn1..3``; the others ``bn``, ``gn``, ``inorm`` or ``ln`` ``1..3``.

    >>> import numpy as np, dualnorm
    >>> with dualnorm.use_backend("numpy"):
    ...     model = simple_cnn()
    ...     out = model(np.random.default_rng(0).standard_normal((1, 3, 32, 32)))
    >>> out.shape
    (1, 10)
    >>> [name for name, _ in model.named_children()][:5]
    ['conv1', 'lrn1', 'relu1', 'pool1', 'conv2']
    """
    kind = _cnn_norm_kind(norm)
    if image_size % 2 ** len(widths):
        raise InputError(
            f"simple_cnn: image_size must be divisible by {2 ** len(widths)} ({len(widths)} 2x2 poolings), "
            f"got {image_size}"
        )
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    prefix = _CNN_NORM_PREFIX.get(kind or "", "")
    for i, width in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(channels, width, kernel_size=3, padding=1)
        norm_layer = make_conv_norm(kind, width, groups=groups)
        if norm_layer is not None:
            layers[f"{prefix}{i}"] = norm_layer
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(kernel_size=2, stride=2)
        channels = width
    side = image_size // 2 ** len(widths)
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(channels * side * side, hidden)
    layers[f"relu{len(widths) + 1}"] = nn.ReLU()
    layers["fc2"] = nn.Linear(hidden, num_classes)
    model = SimpleCNN(layers)
    return model


def digits_cnn(norm: str | None = "batch", *, groups: int = 8, num_classes: int = 10) -> nn.Sequential:
    """The small-batch demo's network for 1x8x8 digits: where batch norm sees only B values per channel.

    ::

        conv1  Conv2d(1, 16, 3, padding=1)  -> norm -> ReLU                 8x8
        conv2  Conv2d(16, 32, 3, padding=1) -> norm -> ReLU -> MaxPool2d(2) 4x4
        conv3  Conv2d(32, 64, 3, padding=1) -> norm -> ReLU -> MaxPool2d(2) 2x2
        conv4  Conv2d(64, 64, 2)            -> norm -> ReLU                 1x1  (the normalized 1x1 stage)
        fc     Linear(64, 10)

    After ``conv4`` each channel has one value per image, so batch norm's statistics come from
    the B images of the batch alone: at B = 2 every channel normalizes to +-1, and the running
    averages used in eval mode describe a different network from the one that trained. The
    earlier stages average over B x 64, B x 16 and B x 4 positions and do not suffer.
    """
    kind = _cnn_norm_kind(norm)
    prefix = _CNN_NORM_PREFIX.get(kind or "", "")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    spec = ((1, 16, 3, 1, False), (16, 32, 3, 1, True), (32, 64, 3, 1, True), (64, 64, 2, 0, False))
    for i, (cin, cout, k, pad, pool) in enumerate(spec, start=1):
        layers[f"conv{i}"] = nn.Conv2d(cin, cout, kernel_size=k, padding=pad)
        norm_layer = make_conv_norm(kind, cout, groups=groups)
        if norm_layer is not None:
            layers[f"{prefix}{i}"] = norm_layer
        layers[f"relu{i}"] = nn.ReLU()
        if pool:
            layers[f"pool{i}"] = nn.MaxPool2d(2)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(64, num_classes)
    return nn.Sequential(layers)
