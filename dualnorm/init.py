"""Weight initializers (as ``torch.nn.init``), drawn from dualnorm's seeded NumPy generator.

Every initializer draws with :func:`dualnorm._rng.get_rng` in float64 on the host and
then converts to the parameter's backend and dtype, so after ``dualnorm.manual_seed(s)``
a model starts from identical numbers on NumPy and on MLX.

Each takes a :class:`~dualnorm.nn.Parameter` (or a layer, meaning its ``weight``) and
replaces its data. Fans follow PyTorch: for a weight of shape (out, in, *k),
``fan_in = in * prod(k)`` and ``fan_out = out * prod(k)``.

>>> import dualnorm
>>> from dualnorm import init
>>> dualnorm.manual_seed(0)
>>> layer = dualnorm.nn.Linear(100, 50)
>>> _ = init.normal_(layer.weight, std=0.01)
>>> round(float(dualnorm.to_numpy(layer.weight.data).std()), 3)
0.01
"""

from __future__ import annotations

import math

import numpy as np

from dualnorm._rng import get_rng
from dualnorm.errors import InputError
from dualnorm.nn.module import Module, Parameter

__all__ = [
    "SCHEMES",
    "calculate_gain",
    "constant_",
    "init_weights",
    "kaiming_normal_",
    "kaiming_uniform_",
    "lecun_normal_",
    "normal_",
    "ones_",
    "uniform_",
    "xavier_normal_",
    "xavier_uniform_",
    "zeros_",
]


def _param(target: Parameter | Module) -> Parameter:
    if isinstance(target, Parameter):
        return target
    weight = getattr(target, "weight", None)
    if isinstance(weight, Parameter):
        return weight
    raise InputError(
        f"cannot initialize a {type(target).__name__}: pass a Parameter or a layer with a weight"
    )


def _assign(param: Parameter, host: np.ndarray) -> Parameter:
    from dualnorm.backends import backend_of

    data = param.data
    backend = backend_of(data)
    param.data = backend.asarray(np.asarray(host, dtype=np.float64), data.dtype)
    return param


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2:
        raise InputError(f"fan in/out need a weight with at least 2 dimensions, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (as ``torch.nn.init.calculate_gain``)."""
    gains = {
        "linear": 1.0,
        "identity": 1.0,
        "sigmoid": 1.0,
        "tanh": 5.0 / 3.0,
        "relu": math.sqrt(2.0),
        "selu": 3.0 / 4.0,
    }
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity not in gains:
        raise InputError(
            f"unknown nonlinearity {nonlinearity!r}; choose one of: {', '.join([*gains, 'leaky_relu'])}"
        )
    return gains[nonlinearity]


def normal_(target: Parameter | Module, mean: float = 0.0, std: float = 1.0) -> Parameter:
    p = _param(target)
    return _assign(p, get_rng().normal(mean, std, p.shape))


def uniform_(target: Parameter | Module, a: float = 0.0, b: float = 1.0) -> Parameter:
    p = _param(target)
    return _assign(p, get_rng().uniform(a, b, p.shape))


def constant_(target: Parameter | Module, value: float) -> Parameter:
    p = _param(target)
    return _assign(p, np.full(p.shape, float(value)))


def zeros_(target: Parameter | Module) -> Parameter:
    return constant_(target, 0.0)


def ones_(target: Parameter | Module) -> Parameter:
    return constant_(target, 1.0)


def xavier_uniform_(target: Parameter | Module, gain: float = 1.0) -> Parameter:
    """Glorot & Bengio 2010: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    p = _param(target)
    fan_in, fan_out = _fans(p.shape)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _assign(p, get_rng().uniform(-a, a, p.shape))


def xavier_normal_(target: Parameter | Module, gain: float = 1.0) -> Parameter:
    """Glorot & Bengio 2010: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    p = _param(target)
    fan_in, fan_out = _fans(p.shape)
    return _assign(p, get_rng().normal(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), p.shape))


def _kaiming_std(shape: tuple[int, ...], a: float, mode: str, nonlinearity: str) -> float:
    fan_in, fan_out = _fans(shape)
    if mode not in ("fan_in", "fan_out"):
        raise InputError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_normal_(
    target: Parameter | Module, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"
) -> Parameter:
    """He et al. 2015: N(0, std^2), std = gain / sqrt(fan). PyTorch's defaults (a=0 -> gain sqrt(2))."""
    p = _param(target)
    return _assign(p, get_rng().normal(0.0, _kaiming_std(p.shape, a, mode, nonlinearity), p.shape))


def kaiming_uniform_(
    target: Parameter | Module, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"
) -> Parameter:
    """He et al. 2015: U(-b, b), b = gain * sqrt(3 / fan)."""
    p = _param(target)
    bound = math.sqrt(3.0) * _kaiming_std(p.shape, a, mode, nonlinearity)
    return _assign(p, get_rng().uniform(-bound, bound, p.shape))


def lecun_normal_(target: Parameter | Module) -> Parameter:
    """LeCun normal, N(0, 1/fan_in): the init SELU's self-normalization assumes."""
    p = _param(target)
    fan_in, _ = _fans(p.shape)
    return _assign(p, get_rng().normal(0.0, 1.0 / math.sqrt(fan_in), p.shape))


SCHEMES = ("default", "normal", "xavier", "kaiming", "lecun")


def init_weights(
    layer: Module, scheme: str = "default", *, std: float = 0.01, activation: str = "relu"
) -> None:
    """Initialize a Linear layer's weight (and zero its bias unless ``scheme`` is "default").

    ``scheme``: "default" (leave PyTorch's uniform init), "normal" (fixed ``std``, bias 0:
    the documents' ``weight_init_std``), "xavier" (Glorot normal), "kaiming" (He normal for
    ``activation``), "lecun" (LeCun normal, for SELU).
    """
    if scheme == "default":
        return
    if scheme not in SCHEMES:
        raise InputError(f"unknown init scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")
    weight = _param(layer)
    if scheme == "normal":
        normal_(weight, 0.0, std)
    elif scheme == "xavier":
        xavier_normal_(weight)
    elif scheme == "kaiming":
        known = ("relu", "leaky_relu", "tanh", "sigmoid", "linear", "selu")
        kaiming_normal_(weight, nonlinearity=activation if activation in known else "relu")
    else:
        lecun_normal_(weight)
    bias = getattr(layer, "bias", None)
    if isinstance(bias, Parameter):
        zeros_(bias)
