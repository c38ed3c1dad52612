"""The few numbers a watcher brings to the host per layer, and the LayerStats made from them.

Both adapters reduce on the model's device into two flat vectors per layer, so that one
transfer per recording step carries everything:

* activation summary (:data:`ACT`): mean, std, min, max, saturated and dead fractions,
  the histogram range, then the histogram counts;
* parameter summary (:data:`PAR`): squared norms of the output gradient, of the
  parameter gradients and of the weight; means of gamma, beta, running mean and running
  variance; ``num_batches_tracked``.

Which entries apply to a layer is known on the host (from the layer's kind and
attributes) and passed along as ``present``; the device fills the others with NaN.
The histogram follows :func:`dualnorm.training.layer_stats`: range [0, 1] after a Sigmoid,
[-1, 1] after a Tanh, the data's [min, max] otherwise, values clipped into the end bins.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dualnorm.records import LayerStats

ACT = ("mean", "std", "min", "max", "saturated", "dead", "lo", "hi")
PAR = ("grad_sq", "param_grad_sq", "weight_sq", "gamma", "beta", "running_mean", "running_var", "batches")

#: the layer kinds whose outputs have a fixed histogram range and a saturation measure
FIXED_RANGE = {"Sigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0)}
SATURATION = {"Sigmoid": (0.01, 0.99), "Tanh": (-0.99, 0.99)}  # outside (low, high) is saturated
DEAD_KINDS = ("ReLU", "LeakyReLU")


def host_activation_summary(a: np.ndarray, kind: str, bins: int) -> list[float] | None:
    """The :data:`ACT` vector of an output already on the host (CPU tensors: NumPy's per-call
    cost is a fraction of torch's or MLX's for the dozen small reductions)."""
    flat = a.reshape(-1)
    n = flat.size
    if n == 0 or not np.issubdtype(flat.dtype, np.floating):
        return None
    mn, mx = float(flat.min()), float(flat.max())
    mean = float(flat.mean(dtype=np.float64))
    centred = flat.astype(np.float64) - mean
    std = math.sqrt(float(np.dot(centred, centred)) / n)
    saturated = dead = math.nan
    if kind in FIXED_RANGE:
        lo, hi = FIXED_RANGE[kind]
        low, high = SATURATION[kind]
        saturated = float(np.count_nonzero((flat < low) | (flat > high))) / n
    else:
        lo, hi = (mn - 0.5, mx + 0.5) if mx <= mn else (mn, mx)
    if kind in DEAD_KINDS:
        units = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
        dead = float(np.mean(units.max(axis=0) <= 0))
    if math.isfinite(lo) and math.isfinite(hi):
        with np.errstate(invalid="ignore"):  # NaN activations: clipped into the first bin, as on a device
            index = ((flat - lo) * (bins / (hi - lo))).astype(np.int64)
        np.clip(index, 0, bins - 1, out=index)
        counts = np.bincount(index, minlength=bins)[:bins].tolist()
    else:
        counts = [0] * bins
    return [mean, std, mn, mx, saturated, dead, lo, hi, *counts]


def build_layer_stats(
    name: str, kind: str, act: list[float] | None, par: list[float], present: frozenset[str]
) -> LayerStats:
    """A LayerStats from one layer's host vectors (``act`` None: no activation was captured).

    ``present``: the :data:`PAR` entries measured for this layer (the rest are None).
    """
    p = dict(zip(PAR, par, strict=True))

    def _opt(key: str, values: dict[str, float] = p) -> float | None:
        return values[key] if key in present else None

    def _root(key: str) -> float | None:
        return math.sqrt(max(p[key], 0.0)) if key in present else None

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
        saturated_frac=values["saturated"] if act is not None and kind in SATURATION else None,
        dead_frac=values["dead"] if act is not None and kind in DEAD_KINDS else None,
        grad_norm=_root("grad_sq"),
        param_grad_norm=_root("param_grad_sq"),
        weight_norm=_root("weight_sq"),
        gamma_mean=_opt("gamma"),
        beta_mean=_opt("beta"),
        running_mean_mean=_opt("running_mean"),
        running_var_mean=_opt("running_var"),
    )


def batches_tracked(
    names: list[str], pars: list[list[float]], present: list[frozenset[str]]
) -> dict[str, int]:
    """``{layer: num_batches_tracked}`` for the layers that have the buffer."""
    i = PAR.index("batches")
    return {
        name: int(par[i]) for name, par, has in zip(names, pars, present, strict=True) if "batches" in has
    }


def recorded_layers(named_modules: Any, has_children: Any, has_own_params: Any) -> list[tuple[str, Any]]:
    """The modules a watcher records: every leaf, plus any container with parameters of its own.

    ``named_modules`` yields (path, module) pairs; a root that is itself a leaf is named "model".
    """
    return [
        (name or "model", module)
        for name, module in named_modules
        if not has_children(module) or has_own_params(module)
    ]
