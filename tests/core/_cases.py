"""Every layer under test, with a float64 reference written from the published formulas.

The references are independent of dualnorm's code and generic over the array
namespace ``xp`` (``numpy`` or ``mlx.core``), so the same formula gives the
float64 NumPy reference and the pure-MLX function that ``mx.grad`` differentiates.

A reference is ``ref(xp, x, P, S, training, frozen) -> (y, new_S, frozen)``:

- ``P`` parameters and ``S`` buffers by their state_dict names (local to the layer);
- ``frozen``: values the layer treats as constants in its backward pass (batch
  renorm's r and d, spectral norm's u and v). ``None`` computes them from the inputs;
  passing them back keeps them fixed, which is what a gradient check needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import dualnorm
from dualnorm import nn

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# --- reference formulas ------------------------------------------------------------------
def _mean(xp, x, axes):
    return xp.mean(x, axis=axes, keepdims=True)


def _sub(d: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in d.items() if k.startswith(prefix)}


def ref_batchnorm(xp, x, P, S, training, frozen, *, eps=1e-5, momentum=0.1, renorm=None):
    """Ioffe & Szegedy 2015 Algorithm 1 + PyTorch's running averages; ``renorm=(rmax, dmax)`` = Ioffe 2017."""
    C = x.shape[1]
    axes = (0, *range(2, x.ndim))
    shape = (1, C) + (1,) * (x.ndim - 2)
    tracking = S.get("running_mean") is not None
    new_S = dict(S)
    if training or not tracking:
        mu = _mean(xp, x, axes)
        var = _mean(xp, (x - mu) * (x - mu), axes)
        xhat = (x - mu) / xp.sqrt(var + eps)
        if renorm is not None and training:
            rmax, dmax = renorm
            if frozen is None:
                sigma = xp.sqrt(S["running_var"].reshape(shape) + eps)
                r = xp.clip(xp.sqrt(var + eps) / sigma, 1.0 / rmax, rmax)
                d = xp.clip((mu - S["running_mean"].reshape(shape)) / sigma, -dmax, dmax)
                frozen = {"r": r, "d": d}
            xhat = xhat * frozen["r"] + frozen["d"]
        if training and tracking:
            n = math.prod(x.shape) // C
            nbt = S["num_batches_tracked"] + 1
            f = 1.0 / nbt if momentum is None else momentum
            new_S["running_mean"] = (1 - f) * S["running_mean"] + f * mu.reshape(-1)
            new_S["running_var"] = (1 - f) * S["running_var"] + f * var.reshape(-1) * n / (n - 1)
            new_S["num_batches_tracked"] = nbt
    else:
        xhat = (x - S["running_mean"].reshape(shape)) / xp.sqrt(S["running_var"].reshape(shape) + eps)
    if "weight" in P:
        xhat = xhat * P["weight"].reshape(shape)
    if "bias" in P:  # PyTorch 2.x's bias=False: a weight without a bias
        xhat = xhat + P["bias"].reshape(shape)
    return xhat, new_S, frozen or {}


def ref_layernorm(xp, x, P, S, training, frozen, *, k, eps=1e-5):
    axes = tuple(range(x.ndim - k, x.ndim))
    mu = _mean(xp, x, axes)
    var = _mean(xp, (x - mu) * (x - mu), axes)
    y = (x - mu) / xp.sqrt(var + eps)
    if "weight" in P:
        y = y * P["weight"]
    if "bias" in P:
        y = y + P["bias"]
    return y, dict(S), {}


def ref_rmsnorm(xp, x, P, S, training, frozen, *, k, eps):
    axes = tuple(range(x.ndim - k, x.ndim))
    y = x / xp.sqrt(_mean(xp, x * x, axes) + eps)
    if "weight" in P:
        y = y * P["weight"]
    return y, dict(S), {}


def ref_groupnorm(xp, x, P, S, training, frozen, *, groups, eps=1e-5):
    """Contiguous groups: channels [g*C/G, (g+1)*C/G) form group g (PyTorch)."""
    C = x.shape[1]
    per = C // groups
    axes = tuple(range(1, x.ndim))
    parts = []
    for g in range(groups):
        block = x[:, g * per : (g + 1) * per]
        mu = _mean(xp, block, axes)
        var = _mean(xp, (block - mu) * (block - mu), axes)
        parts.append((block - mu) / xp.sqrt(var + eps))
    y = xp.concatenate(parts, axis=1)
    shape = (1, C) + (1,) * (x.ndim - 2)
    if "weight" in P:
        y = y * P["weight"].reshape(shape)
    if "bias" in P:
        y = y + P["bias"].reshape(shape)
    return y, dict(S), {}


def ref_instancenorm(xp, x, P, S, training, frozen, *, spatial, eps=1e-5, momentum=0.1):
    unbatched = x.ndim == spatial + 1
    if unbatched:
        x = x.reshape((1, *x.shape))
    C = x.shape[1]
    axes = tuple(range(2, x.ndim))
    shape = (1, C) + (1,) * (x.ndim - 2)
    tracking = S.get("running_mean") is not None
    new_S = dict(S)
    if training or not tracking:
        mu = _mean(xp, x, axes)
        var = _mean(xp, (x - mu) * (x - mu), axes)
        y = (x - mu) / xp.sqrt(var + eps)
        if training and tracking and momentum is not None:  # PyTorch: momentum None -> no update
            n = math.prod(x.shape[2:])
            batch_mu = xp.mean(mu.reshape(x.shape[0], C), axis=0)
            batch_var = xp.mean(var.reshape(x.shape[0], C), axis=0) * n / (n - 1)
            new_S["running_mean"] = (1 - momentum) * S["running_mean"] + momentum * batch_mu
            new_S["running_var"] = (1 - momentum) * S["running_var"] + momentum * batch_var
    else:
        y = (x - S["running_mean"].reshape(shape)) / xp.sqrt(S["running_var"].reshape(shape) + eps)
    if "weight" in P:
        y = y * P["weight"].reshape(shape)
    if "bias" in P:
        y = y + P["bias"].reshape(shape)
    return (y[0] if unbatched else y), new_S, {}


def ref_lrn(xp, x, P, S, training, frozen, *, size, alpha=1e-4, beta=0.75, k=1.0):
    """torch.nn.LocalResponseNorm: window c - size//2 .. c + (size-1)//2, zeros outside."""
    C = x.shape[1]
    outs = []
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C, c + (size - 1) // 2 + 1)
        energy = xp.sum(x[:, lo:hi] * x[:, lo:hi], axis=1)
        outs.append(x[:, c] / (k + alpha / size * energy) ** beta)
    return xp.stack(outs, axis=1), dict(S), {}


def ref_linear(xp, x, P, S, training, frozen, *, weight=None):
    w = P["weight"] if weight is None else weight
    y = x @ w.T
    if "bias" in P:
        y = y + P["bias"]
    return y, dict(S), {}


def ref_weight_norm(xp, x, P, S, training, frozen, *, dim):
    v = P["weight_v"]
    # dim None: one norm over the whole weight; dim 0 of a Linear weight: one per output row.
    norm = xp.sqrt(xp.sum(v * v)) if dim is None else xp.sqrt(xp.sum(v * v, axis=1, keepdims=True))
    w = P["weight_g"] * v / norm
    return ref_linear(xp, x, {k: v for k, v in P.items() if k == "bias"}, S, training, None, weight=w)


def ref_spectral_norm(xp, x, P, S, training, frozen, *, eps=1e-12, n_iter=1):
    """Miyato et al. 2018 as torch.nn.utils.spectral_norm: power iteration in training only."""
    W = P["weight_orig"]
    new_S = dict(S)
    if frozen is None:
        u, v = S["weight_u"], S["weight_v"]
        if training:
            for _ in range(n_iter):
                v = W.T @ u
                v = v / xp.maximum(xp.sqrt(xp.sum(v * v)), eps)
                u = W @ v
                u = u / xp.maximum(xp.sqrt(xp.sum(u * u)), eps)
        frozen = {"u": u, "v": v}
    u, v = frozen["u"], frozen["v"]
    if training:
        new_S["weight_u"], new_S["weight_v"] = u, v
    sigma = xp.sum(u * (W @ v))
    y, _, _ = ref_linear(
        xp, x, {k: v for k, v in P.items() if k == "bias"}, S, training, None, weight=W / sigma
    )
    return y, new_S, frozen


def ref_activation(name, slope=0.01):
    def ref(xp, x, P, S, training, frozen):
        if name == "relu":
            y = xp.maximum(x, 0.0)
        elif name == "leaky":
            y = xp.where(x > 0, x, slope * x)
        elif name == "sigmoid":
            y = 1.0 / (1.0 + xp.exp(-x))
        elif name == "tanh":
            y = xp.tanh(x)
        else:
            y = SELU_SCALE * xp.where(x > 0, x, SELU_ALPHA * (xp.exp(xp.minimum(x, 0.0)) - 1.0))
        return y, dict(S), {}

    return ref


def ref_sequential(xp, x, P, S, training, frozen):
    """Linear(3, 4) -> BatchNorm1d(4) -> Tanh -> Linear(4, 2)."""
    y, _, _ = ref_linear(xp, x, _sub(P, "0."), {}, training, None)
    y, bn_S, _ = ref_batchnorm(xp, y, _sub(P, "1."), _sub(S, "1."), training, None)
    y = xp.tanh(y)
    y, _, _ = ref_linear(xp, y, _sub(P, "3."), {}, training, None)
    return y, {f"1.{k}": v for k, v in bn_S.items()}, {}


# --- the cases ------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    make: Callable[..., nn.Module]  # make(dtype) on the active backend
    shape: tuple[int, ...]
    ref: Callable[..., Any]
    torch: Callable[[], Any] | None = None  # the torch.nn equivalent (built when torch is imported)
    stop_grad: bool = False  # backward treats some forward values as constants in training

    def __repr__(self) -> str:
        return self.id


def _p(fn, **kw):
    return lambda xp, x, P, S, training, frozen: fn(xp, x, P, S, training, frozen, **kw)


def _t(expr: str) -> Callable[[], Any]:
    """A torch module factory from source text, so this file imports without torch."""

    def build():
        import torch

        return eval(expr, {"torch": torch})

    return build


CASES = [
    Case(
        "bn1d_2d",
        lambda d=None: nn.BatchNorm1d(3, dtype=d),
        (5, 3),
        _p(ref_batchnorm),
        _t("torch.nn.BatchNorm1d(3)"),
    ),
    Case(
        "bn1d_3d",
        lambda d=None: nn.BatchNorm1d(3, dtype=d),
        (4, 3, 2),
        _p(ref_batchnorm),
        _t("torch.nn.BatchNorm1d(3)"),
    ),
    Case(
        "bn1d_noaffine_eps",
        lambda d=None: nn.BatchNorm1d(3, eps=1e-3, affine=False, dtype=d),
        (5, 3),
        _p(ref_batchnorm, eps=1e-3),
        _t("torch.nn.BatchNorm1d(3, eps=1e-3, affine=False)"),
    ),
    Case(
        "bn1d_momentum_none",
        lambda d=None: nn.BatchNorm1d(3, momentum=None, dtype=d),
        (5, 3),
        _p(ref_batchnorm, momentum=None),
        _t("torch.nn.BatchNorm1d(3, momentum=None)"),
    ),
    Case(
        "bn1d_momentum_0.3",
        lambda d=None: nn.BatchNorm1d(3, momentum=0.3, dtype=d),
        (4, 3, 2),
        _p(ref_batchnorm, momentum=0.3),
        _t("torch.nn.BatchNorm1d(3, momentum=0.3)"),
    ),
    Case(
        "bn1d_untracked",
        lambda d=None: nn.BatchNorm1d(3, track_running_stats=False, dtype=d),
        (5, 3),
        _p(ref_batchnorm),
        _t("torch.nn.BatchNorm1d(3, track_running_stats=False)"),
    ),
    Case(
        "bn2d",
        lambda d=None: nn.BatchNorm2d(2, dtype=d),
        (3, 2, 2, 3),
        _p(ref_batchnorm),
        _t("torch.nn.BatchNorm2d(2)"),
    ),
    Case(
        "bn3d",
        lambda d=None: nn.BatchNorm3d(2, dtype=d),
        (2, 2, 2, 2, 2),
        _p(ref_batchnorm),
        _t("torch.nn.BatchNorm3d(2)"),
    ),
    Case(
        "brn1d",
        lambda d=None: nn.BatchRenorm1d(3, rmax=1.5, dmax=0.5, dtype=d),
        (5, 3),
        _p(ref_batchnorm, renorm=(1.5, 0.5)),
        stop_grad=True,
    ),
    Case(
        "brn1d_3d_defaults",
        lambda d=None: nn.BatchRenorm1d(3, dtype=d),
        (4, 3, 2),
        _p(ref_batchnorm, renorm=(3.0, 5.0)),
        stop_grad=True,
    ),
    Case(
        "brn2d",
        lambda d=None: nn.BatchRenorm2d(2, momentum=None, rmax=1.2, dmax=0.2, dtype=d),
        (3, 2, 2, 2),
        _p(ref_batchnorm, momentum=None, renorm=(1.2, 0.2)),
        stop_grad=True,
    ),
    Case(
        "ln1",
        lambda d=None: nn.LayerNorm(4, dtype=d),
        (3, 4),
        _p(ref_layernorm, k=1),
        _t("torch.nn.LayerNorm(4)"),
    ),
    Case(
        "ln2",
        lambda d=None: nn.LayerNorm((2, 3), eps=1e-3, dtype=d),
        (2, 2, 2, 3),
        _p(ref_layernorm, k=2, eps=1e-3),
        _t("torch.nn.LayerNorm((2, 3), eps=1e-3)"),
    ),
    Case(
        "ln_noaffine",
        lambda d=None: nn.LayerNorm(4, elementwise_affine=False, dtype=d),
        (3, 4),
        _p(ref_layernorm, k=1),
        _t("torch.nn.LayerNorm(4, elementwise_affine=False)"),
    ),
    Case(
        "ln_nobias",
        lambda d=None: nn.LayerNorm(4, bias=False, dtype=d),
        (2, 3, 4),
        _p(ref_layernorm, k=1),
        _t("torch.nn.LayerNorm(4, bias=False)"),
    ),
    Case(
        "gn",
        lambda d=None: nn.GroupNorm(2, 4, dtype=d),
        (2, 4, 3),
        _p(ref_groupnorm, groups=2),
        _t("torch.nn.GroupNorm(2, 4)"),
    ),
    Case(
        "gn_g1",
        lambda d=None: nn.GroupNorm(1, 4, dtype=d),
        (2, 4, 3),
        _p(ref_groupnorm, groups=1),
        _t("torch.nn.GroupNorm(1, 4)"),
    ),
    Case(
        "gn_gC",
        lambda d=None: nn.GroupNorm(4, 4, dtype=d),
        (2, 4, 3),
        _p(ref_groupnorm, groups=4),
        _t("torch.nn.GroupNorm(4, 4)"),
    ),
    Case(
        "gn_noaffine_4d",
        lambda d=None: nn.GroupNorm(3, 6, eps=1e-3, affine=False, dtype=d),
        (2, 6, 2, 2),
        _p(ref_groupnorm, groups=3, eps=1e-3),
        _t("torch.nn.GroupNorm(3, 6, eps=1e-3, affine=False)"),
    ),
    Case(
        "bn1d_nobias",
        lambda d=None: nn.BatchNorm1d(3, bias=False, dtype=d),
        (5, 3),
        _p(ref_batchnorm),
        _t("torch.nn.BatchNorm1d(3, bias=False)"),
    ),
    Case(
        "bn2d_nobias",
        lambda d=None: nn.BatchNorm2d(2, bias=False, dtype=d),
        (3, 2, 2, 3),
        _p(ref_batchnorm),
        _t("torch.nn.BatchNorm2d(2, bias=False)"),
    ),
    Case(
        "gn_nobias",
        lambda d=None: nn.GroupNorm(2, 4, bias=False, dtype=d),
        (2, 4, 3),
        _p(ref_groupnorm, groups=2),
        _t("torch.nn.GroupNorm(2, 4, bias=False)"),
    ),
    Case(
        "in1d_affine_nobias",
        lambda d=None: nn.InstanceNorm1d(3, affine=True, bias=False, dtype=d),
        (2, 3, 4),
        _p(ref_instancenorm, spatial=1),
        _t("torch.nn.InstanceNorm1d(3, affine=True, bias=False)"),
    ),
    Case(
        "in3d_affine_tracked",
        lambda d=None: nn.InstanceNorm3d(2, affine=True, track_running_stats=True, dtype=d),
        (2, 2, 2, 2, 3),
        _p(ref_instancenorm, spatial=3),
        _t("torch.nn.InstanceNorm3d(2, affine=True, track_running_stats=True)"),
    ),
    Case(
        "in3d_unbatched",
        lambda d=None: nn.InstanceNorm3d(2, dtype=d),
        (2, 2, 3, 2),
        _p(ref_instancenorm, spatial=3),
        _t("torch.nn.InstanceNorm3d(2)"),
    ),
    Case(
        "in1d",
        lambda d=None: nn.InstanceNorm1d(3, dtype=d),
        (2, 3, 4),
        _p(ref_instancenorm, spatial=1),
        _t("torch.nn.InstanceNorm1d(3)"),
    ),
    Case(
        "in1d_affine",
        lambda d=None: nn.InstanceNorm1d(3, affine=True, dtype=d),
        (2, 3, 4),
        _p(ref_instancenorm, spatial=1),
        _t("torch.nn.InstanceNorm1d(3, affine=True)"),
    ),
    Case(
        "in1d_tracked",
        lambda d=None: nn.InstanceNorm1d(3, track_running_stats=True, dtype=d),
        (2, 3, 4),
        _p(ref_instancenorm, spatial=1),
        _t("torch.nn.InstanceNorm1d(3, track_running_stats=True)"),
    ),
    Case(
        "in1d_unbatched_affine_tracked",
        lambda d=None: nn.InstanceNorm1d(3, affine=True, track_running_stats=True, dtype=d),
        (3, 4),
        _p(ref_instancenorm, spatial=1),
        _t("torch.nn.InstanceNorm1d(3, affine=True, track_running_stats=True)"),
    ),
    Case(
        "in2d_affine",
        lambda d=None: nn.InstanceNorm2d(2, affine=True, dtype=d),
        (2, 2, 3, 2),
        _p(ref_instancenorm, spatial=2),
        _t("torch.nn.InstanceNorm2d(2, affine=True)"),
    ),
    Case(
        "in2d_tracked_momentum_none",
        lambda d=None: nn.InstanceNorm2d(2, momentum=None, track_running_stats=True, dtype=d),
        (2, 2, 2, 3),
        _p(ref_instancenorm, spatial=2, momentum=None),
        _t("torch.nn.InstanceNorm2d(2, momentum=None, track_running_stats=True)"),
    ),
    Case(
        "in2d_unbatched",
        lambda d=None: nn.InstanceNorm2d(2, track_running_stats=True, dtype=d),
        (2, 3, 2),
        _p(ref_instancenorm, spatial=2),
        _t("torch.nn.InstanceNorm2d(2, track_running_stats=True)"),
    ),
    Case("rms_default_eps", lambda d=None: nn.RMSNorm(4, dtype=d), (3, 4), None, _t("torch.nn.RMSNorm(4)")),
    Case(
        "rms_eps_2d",
        lambda d=None: nn.RMSNorm((2, 3), eps=1e-3, dtype=d),
        (2, 2, 3),
        _p(ref_rmsnorm, k=2, eps=1e-3),
        _t("torch.nn.RMSNorm((2, 3), eps=1e-3)"),
    ),
    Case(
        "rms_noaffine",
        lambda d=None: nn.RMSNorm(4, eps=1e-6, elementwise_affine=False, dtype=d),
        (3, 4),
        _p(ref_rmsnorm, k=1, eps=1e-6),
        _t("torch.nn.RMSNorm(4, eps=1e-6, elementwise_affine=False)"),
    ),
    Case(
        "lrn",
        lambda d=None: nn.LocalResponseNorm(3, dtype=d),
        (2, 5, 3),
        _p(ref_lrn, size=3),
        _t("torch.nn.LocalResponseNorm(3)"),
    ),
    Case(
        "lrn_even_4d",
        lambda d=None: nn.LocalResponseNorm(2, alpha=0.3, beta=0.6, k=2.0, dtype=d),
        (2, 4, 2, 2),
        _p(ref_lrn, size=2, alpha=0.3, beta=0.6, k=2.0),
        _t("torch.nn.LocalResponseNorm(2, alpha=0.3, beta=0.6, k=2.0)"),
    ),
    Case(
        "lrn_wide",
        lambda d=None: nn.LocalResponseNorm(5, alpha=0.5, beta=0.75, k=1.0, dtype=d),
        (1, 3, 4),
        _p(ref_lrn, size=5, alpha=0.5),
        _t("torch.nn.LocalResponseNorm(5, alpha=0.5)"),
    ),
    Case(
        "weight_norm_dim0",
        lambda d=None: nn.utils.weight_norm(nn.Linear(3, 2, dtype=d), dim=0),
        (4, 3),
        _p(ref_weight_norm, dim=0),
        _t("torch.nn.utils.weight_norm(torch.nn.Linear(3, 2), dim=0)"),
    ),
    Case(
        "weight_norm_dimNone",
        lambda d=None: nn.utils.weight_norm(nn.Linear(3, 2, dtype=d), dim=None),
        (4, 3),
        _p(ref_weight_norm, dim=None),
        _t("torch.nn.utils.weight_norm(torch.nn.Linear(3, 2), dim=None)"),
    ),
    Case(
        "spectral_norm",
        lambda d=None: nn.utils.spectral_norm(nn.Linear(3, 4, dtype=d)),
        (4, 3),
        _p(ref_spectral_norm),
        _t("torch.nn.utils.spectral_norm(torch.nn.Linear(3, 4))"),
        stop_grad=True,
    ),
    Case(
        "linear", lambda d=None: nn.Linear(3, 2, dtype=d), (4, 3), _p(ref_linear), _t("torch.nn.Linear(3, 2)")
    ),
    Case(
        "linear_nobias_3d",
        lambda d=None: nn.Linear(3, 2, bias=False, dtype=d),
        (2, 4, 3),
        _p(ref_linear),
        _t("torch.nn.Linear(3, 2, bias=False)"),
    ),
    # One input feature: forward and backward are outer products (dualnorm computes them as such)
    Case(
        "linear_in1",
        lambda d=None: nn.Linear(1, 3, dtype=d),
        (5, 1),
        _p(ref_linear),
        _t("torch.nn.Linear(1, 3)"),
    ),
    Case(
        "linear_1_to_1_3d",
        lambda d=None: nn.Linear(1, 1, bias=False, dtype=d),
        (2, 6, 1),
        _p(ref_linear),
        _t("torch.nn.Linear(1, 1, bias=False)"),
    ),
    Case("relu", lambda d=None: nn.ReLU(dtype=d), (3, 4), ref_activation("relu"), _t("torch.nn.ReLU()")),
    Case(
        "leaky_relu",
        lambda d=None: nn.LeakyReLU(0.2, dtype=d),
        (3, 4),
        ref_activation("leaky", 0.2),
        _t("torch.nn.LeakyReLU(0.2)"),
    ),
    Case(
        "sigmoid",
        lambda d=None: nn.Sigmoid(dtype=d),
        (3, 4),
        ref_activation("sigmoid"),
        _t("torch.nn.Sigmoid()"),
    ),
    Case("tanh", lambda d=None: nn.Tanh(dtype=d), (3, 4), ref_activation("tanh"), _t("torch.nn.Tanh()")),
    Case("selu", lambda d=None: nn.SELU(dtype=d), (3, 4), ref_activation("selu"), _t("torch.nn.SELU()")),
    Case(
        "sequential",
        lambda d=None: nn.Sequential(
            nn.Linear(3, 4, dtype=d), nn.BatchNorm1d(4, dtype=d), nn.Tanh(dtype=d), nn.Linear(4, 2, dtype=d)
        ),
        (5, 3),
        ref_sequential,
        _t(
            "torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Tanh(), "
            "torch.nn.Linear(4, 2))"
        ),
    ),
]


# RMSNorm(eps=None) uses the machine epsilon of the layer's dtype (PyTorch: of the input's dtype).
REF_DTYPE = {"name": "float32"}


def _ref_rms_default(xp, x, P, S, training, frozen):
    eps = float(np.finfo(REF_DTYPE["name"]).eps)
    return ref_rmsnorm(xp, x, P, S, training, frozen, k=1, eps=eps)


for _case in CASES:
    if _case.id == "rms_default_eps":
        _case.ref = _ref_rms_default

STATEFUL = [c for c in CASES if c.id.startswith(("bn", "brn", "in", "spectral", "sequential"))]
BY_ID = {c.id: c for c in CASES}


# --- helpers ----------------------------------------------------------------------------------
def host(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(dualnorm.to_numpy(value))


def np_state(layer: nn.Module) -> dict[str, np.ndarray]:
    """A float64 (int for counters) NumPy copy of the layer's state_dict."""
    out = {}
    for k, v in layer.state_dict().items():
        a = np.array(host(v))
        out[k] = a if a.dtype.kind in "iu" else a.astype(np.float64)
    return out


def split_state(layer: nn.Module) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(parameters, buffers) of a layer as float64 NumPy copies, by state_dict name."""
    state = np_state(layer)
    names = {n for n, _ in layer.named_parameters()}
    params = {k: v for k, v in state.items() if k in names}
    buffers = {k: v for k, v in state.items() if k not in names}
    return params, buffers


def randomize(layer: nn.Module, seed: int = 0) -> None:
    """Give every parameter and buffer non-trivial values (same numbers on every backend)."""
    rng = np.random.default_rng(seed)
    params, buffers = split_state(layer)
    new = {}
    for k, v in params.items():
        loc = 0.9 if k.rsplit(".", 1)[-1] in ("weight", "weight_g") else 0.0
        new[k] = rng.normal(loc, 0.4, v.shape)
    for k, v in buffers.items():
        leaf = k.rsplit(".", 1)[-1]
        if leaf == "running_mean":
            new[k] = rng.normal(0.0, 0.5, v.shape)
        elif leaf == "running_var":
            new[k] = rng.uniform(0.5, 2.0, v.shape)
        elif leaf == "num_batches_tracked":
            new[k] = np.array(3)
        else:  # spectral norm's u and v: unit vectors
            u = rng.normal(size=v.shape)
            new[k] = u / np.linalg.norm(u)
    layer.load_state_dict(new)


def make_input(case: Case, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.3, 1.5, case.shape)


def assert_close(actual: Any, expected: Any, tol: float, what: str = "") -> None:
    """max |a - e| <= tol * max(1, max |e|): a relative tolerance on the array's scale."""
    a = np.asarray(host(actual), dtype=np.float64)
    e = np.asarray(host(expected), dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    if a.size == 0:
        return
    scale = max(1.0, float(np.max(np.abs(e))))
    err = float(np.max(np.abs(a - e)))
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:g} * {scale:.3g}"


def run_reference(
    case: Case, x: np.ndarray, params: dict, buffers: dict, training: bool, dtype: str = "float32"
):
    """The float64 NumPy reference for a layer of ``dtype`` (only RMSNorm's default eps depends on it)."""
    REF_DTYPE["name"] = dtype
    return case.ref(np, x, params, buffers, training, None)


__all__ = [
    "BY_ID",
    "CASES",
    "STATEFUL",
    "Case",
    "assert_close",
    "host",
    "make_input",
    "np_state",
    "randomize",
    "run_reference",
    "split_state",
]
