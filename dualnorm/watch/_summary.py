"""The few numbers a watcher brings to the host per layer, and the LayerStats made from them.

Both adapters reduce on the model's device into two flat vectors per layer, so that one
transfer per recording step carries everything:

* activation summary (:data:`ACT`): mean, std, min, max, saturated and dead fractions,
  the histogram range, then the histogram counts;
* parameter summary (:data:`PAR`): squared norms of the output gradient, of the
  parameter gradients and of the weight; means of gamma, beta, running mean and running
  variance; ``num_batches_tracked``.

NaN marks "not measured" (a fraction or squared norm is never NaN when measured).
The histogram follows :func:`dualnorm.training.layer_stats`: range [0, 1] after a Sigmoid,
[-1, 1] after a Tanh, the data's [min, max] otherwise, values clipped into the end bins.
"""

from __future__ import annotations

import math
from typing import Any

from dualnorm.records import LayerStats

ACT = ("mean", "std", "min", "max", "saturated", "dead", "lo", "hi")
PAR = ("grad_sq", "param_grad_sq", "weight_sq", "gamma", "beta", "running_mean", "running_var", "batches")

#: the layer kinds whose outputs have a fixed histogram range and a saturation measure
FIXED_RANGE = {"Sigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0)}
SATURATION = {"Sigmoid": (0.01, 0.99), "Tanh": (-0.99, 0.99)}  # outside (low, high) is saturated
DEAD_KINDS = ("ReLU", "LeakyReLU")


def _opt(value: float) -> float | None:
    return None if math.isnan(value) else value


def _root(value: float) -> float | None:
    return None if math.isnan(value) else math.sqrt(max(value, 0.0))


def build_layer_stats(name: str, kind: str, act: list[float] | None, par: list[float]) -> LayerStats:
    """A LayerStats from one layer's host vectors (``act`` None: no activation was captured)."""
    p = dict(zip(PAR, par, strict=True))
    if act is None:
        values = dict.fromkeys(ACT, math.nan)
        counts, edges = [], []
    else:
        values = dict(zip(ACT, act[: len(ACT)], strict=True))
        lo, hi = values["lo"], values["hi"]
        bins = len(act) - len(ACT)
        if math.isfinite(lo) and math.isfinite(hi) and bins:
            counts = [int(c) for c in act[len(ACT) :]]
            width = (hi - lo) / bins
            edges = [lo + width * i for i in range(bins)] + [hi]
        else:
            counts, edges = [], []
    return LayerStats(
        name=name,
        kind=kind,
        act_mean=values["mean"],
        act_std=values["std"],
        act_min=values["min"],
        act_max=values["max"],
        hist_counts=counts,
        hist_edges=edges,
        saturated_frac=_opt(values["saturated"]),
        dead_frac=_opt(values["dead"]),
        grad_norm=_root(p["grad_sq"]),
        param_grad_norm=_root(p["param_grad_sq"]),
        weight_norm=_root(p["weight_sq"]),
        gamma_mean=_opt(p["gamma"]),
        beta_mean=_opt(p["beta"]),
        running_mean_mean=_opt(p["running_mean"]),
        running_var_mean=_opt(p["running_var"]),
    )


def batches_tracked(names: list[str], pars: list[list[float]]) -> dict[str, int]:
    """``{layer: num_batches_tracked}`` for the layers that have the buffer."""
    i = PAR.index("batches")
    return {name: int(par[i]) for name, par in zip(names, pars, strict=True) if not math.isnan(par[i])}


def recorded_layers(named_modules: Any, has_children: Any, has_own_params: Any) -> list[tuple[str, Any]]:
    """The modules a watcher records: every leaf, plus any container with parameters of its own.

    ``named_modules`` yields (path, module) pairs; a root that is itself a leaf is named "model".
    """
    return [
        (name or "model", module)
        for name, module in named_modules
        if not has_children(module) or has_own_params(module)
    ]
