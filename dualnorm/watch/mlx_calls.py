"""mlx.nn models: calls wrapped for the recording steps, gradients from the tree the user passes.

MLX has no module hooks, and ``module(x)`` looks ``__call__`` up on the class, so arming
swaps each recorded module's class for a subclass whose ``__call__`` keeps a reference
to the output (MLX arrays are immutable: a reference is a snapshot, and nothing is
evaluated). Disarming puts the original classes back, so between recording steps the
model's calls are its own.

Gradients come from the tree ``nn.value_and_grad`` returned, passed as
``run.log(step, loss=..., grads=grads)``: each layer's ``param_grad_norm`` is the norm of
its parameters' gradients. The gradient with respect to a layer's *output*
(``grad_norm``) is not available in MLX without changing the loss function, so it stays
empty. On a GPU the statistics are built lazily and evaluated by one ``mx.eval`` at the
recording step, then cross to the host as two small arrays; on the CPU device the outputs
are read as NumPy arrays and reduced by NumPy, which costs less for these small reductions.

A step function under ``mx.compile`` is traced once, so the wrapped calls are not seen in
it: compile the step only after tracking, or track the uncompiled step.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dualnorm.watch import Watcher
from dualnorm.watch._summary import (
    ACT,
    DEAD_KINDS,
    FIXED_RANGE,
    PAR,
    SATURATION,
    build_layer_stats,
    host_activation_summary,
    recorded_layers,
)

_NORM_NAMES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm")
_SLOTS: dict[int, tuple[MLXWatcher, int]] = {}  # id(module) -> (its watcher, layer index) while armed
_RECORDING: dict[type, type] = {}  # class -> its recording subclass


def _recording_class(cls: type) -> type:
    """``cls`` with a ``__call__`` that hands its output to the armed watcher (made once per class)."""
    if cls not in _RECORDING:
        call = cls.__call__

        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            out = call(self, *args, **kwargs)
            slot = _SLOTS.get(id(self))
            if slot is not None:
                slot[0].capture(slot[1], out)
            return out

        _RECORDING[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
    return _RECORDING[cls]


def _arrays(module: Any, mx: Any) -> dict[str, Any]:
    return {k: v for k, v in module.items() if isinstance(v, mx.array)}


class MLXWatcher(Watcher):
    """Per-layer statistics of an ``mlx.nn.Module`` (see the module doc)."""

    framework = "mlx"
    backend_name = "mlx.nn"

    def __init__(self, model: Any, bins: int, host: bool | None = None) -> None:
        import mlx.core as mx

        self.mx = mx
        self.model = model
        self.bins = bins
        # named_modules() lists the deepest modules first: reversed, it is definition order
        self.layers = recorded_layers(
            reversed(list(model.named_modules())),
            lambda m: bool(m.children()),
            lambda m: bool(_arrays(m, mx)),
        )
        self.names = [name for name, _ in self.layers]
        self._classes: list[type] = [type(m) for _, m in self.layers]
        self.device = str(mx.default_device())
        # on the CPU device, NumPy reduces the few small arrays faster than a graph of MLX ops
        self.host = mx.default_device() == mx.cpu if host is None else host
        self.outputs: list[Any] = [None] * len(self.layers)

    def arm(self) -> None:
        if self.armed:
            return
        self.outputs = [None] * len(self.layers)
        for i, (_, module) in enumerate(self.layers):
            _SLOTS[id(module)] = (self, i)
            object.__setattr__(module, "__class__", _recording_class(self._classes[i]))
        self.armed = True

    def disarm(self) -> None:
        for i, (_, module) in enumerate(self.layers):
            _SLOTS.pop(id(module), None)
            object.__setattr__(module, "__class__", self._classes[i])
        self.armed = False

    def capture(self, i: int, output: Any) -> None:
        self.hook_calls += 1
        if isinstance(output, (tuple, list)):
            output = next((o for o in output if isinstance(o, self.mx.array)), None)
        if isinstance(output, self.mx.array):
            self.outputs[i] = output

    def _activation_summary(self, x: Any, kind: str) -> tuple[Any, Any] | None:
        mx, bins = self.mx, self.bins
        if x.size == 0 or not mx.issubdtype(x.dtype, mx.floating):
            return None
        xf = x.reshape(-1).astype(mx.float32)
        mean = mx.mean(xf)
        std = mx.sqrt(mx.mean(mx.square(xf - mean)))
        mn, mxv = mx.min(xf), mx.max(xf)
        nan = mx.array(math.nan, dtype=mx.float32)
        if kind in FIXED_RANGE:
            lo, hi = (mx.array(v, dtype=mx.float32) for v in FIXED_RANGE[kind])
            low, high = SATURATION[kind]
            saturated = mx.mean(((xf < low) | (xf > high)).astype(mx.float32))
        else:
            same = mxv <= mn
            lo, hi = mx.where(same, mn - 0.5, mn), mx.where(same, mxv + 0.5, mxv)
            saturated = nan
        dead = nan
        if kind in DEAD_KINDS:
            units = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
            dead = mx.mean((mx.max(units, axis=0) <= 0).astype(mx.float32))
        index = mx.clip(mx.nan_to_num((xf - lo) * (bins / (hi - lo)), nan=0.0), 0, bins - 1).astype(mx.int32)
        counts = mx.zeros((bins,), dtype=mx.int32).at[index].add(1)
        return mx.stack([mean, std, mn, mxv, saturated, dead, lo, hi]), counts

    def _param_summary(self, i: int, module: Any, grads: dict[str, list[Any]]) -> tuple[Any, frozenset[str]]:
        mx = self.mx
        nan = mx.array(math.nan, dtype=mx.float32)
        arrays = _arrays(module, mx)

        def sq(items: list[Any]) -> Any:
            return sum(mx.sum(mx.square(a.astype(mx.float32))) for a in items) if items else nan

        def mean(a: Any) -> Any:
            return nan if a is None else mx.mean(a.astype(mx.float32))

        values = dict.fromkeys(PAR, nan)
        if self.names[i] in grads:
            values["param_grad_sq"] = sq(grads[self.names[i]])
        if "weight" in arrays:
            values["weight_sq"] = sq([arrays["weight"]])
        if type(module).__name__ in _NORM_NAMES:
            values["gamma"] = mean(arrays.get("weight"))
            values["beta"] = mean(arrays.get("bias"))
            values["running_mean"] = mean(arrays.get("running_mean"))
            values["running_var"] = mean(arrays.get("running_var"))
        present = frozenset(k for k, v in values.items() if v is not nan)  # absent entries: the nan itself
        return mx.stack([values[k] for k in PAR]), present

    def _grads_by_layer(self, grads: Any) -> dict[str, list[Any]]:
        if grads is None:
            return {}
        from mlx.utils import tree_flatten

        out: dict[str, list[Any]] = {}
        for key, g in tree_flatten(grads):
            if isinstance(g, self.mx.array):
                owner = key.rsplit(".", 1)[0] if "." in key else "model"
                out.setdefault(owner, []).append(g)
        return out

    def _host_layer_stats(self, by_layer: dict[str, list[Any]]) -> list[Any]:
        stats = []
        for i, (name, module) in enumerate(self.layers):
            kind = self._classes[i].__name__
            out = self.outputs[i]
            act = None if out is None else host_activation_summary(np.array(out), kind, self.bins)
            arrays = _arrays(module, self.mx)
            values: dict[str, float] = {}
            if name in by_layer:
                values["param_grad_sq"] = sum(
                    float(np.square(np.array(g, dtype=np.float64)).sum()) for g in by_layer[name]
                )
            if "weight" in arrays:
                values["weight_sq"] = float(np.square(np.array(arrays["weight"], dtype=np.float64)).sum())
            if kind in _NORM_NAMES:
                for key, attr in (("gamma", "weight"), ("beta", "bias"), ("running_mean", "running_mean"),
                                  ("running_var", "running_var")):  # fmt: skip
                    if attr in arrays:
                        values[key] = float(np.array(arrays[attr], dtype=np.float64).mean())
            par = [values.get(k, math.nan) for k in PAR]
            stats.append(build_layer_stats(name, kind, act, par, frozenset(values)))
        self.outputs = [None] * len(self.layers)
        return stats

    def layer_stats(self, grads: Any = None) -> list[Any] | None:
        mx = self.mx
        if all(o is None for o in self.outputs):
            return None
        by_layer = self._grads_by_layer(grads)
        if self.host:
            return self._host_layer_stats(by_layer)
        acts = [
            None if out is None else self._activation_summary(out, kind)
            for out, kind in zip(self.outputs, (c.__name__ for c in self._classes), strict=True)
        ]
        summaries = [self._param_summary(i, m, by_layer) for i, (_, m) in enumerate(self.layers)]
        floats = mx.concatenate([*(a[0] for a in acts if a is not None), *(v for v, _ in summaries)])
        counts = [a[1] for a in acts if a is not None]
        counts_all = mx.concatenate(counts) if counts else mx.zeros((0,), dtype=mx.int32)
        mx.eval(floats, counts_all)  # the one evaluation, at the recording step only
        host_f = np.array(floats, dtype=np.float64).tolist()
        host_c = np.array(counts_all).tolist()
        stats, at_f, at_c, n_act = [], 0, 0, len(ACT)
        measured = [a is not None for a in acts]
        act_host: list[list[float] | None] = []
        for has in measured:
            if has:
                act_host.append(host_f[at_f : at_f + n_act] + host_c[at_c : at_c + self.bins])
                at_f += n_act
                at_c += self.bins
            else:
                act_host.append(None)
        for i, (name, _) in enumerate(self.layers):
            par = host_f[at_f : at_f + len(PAR)]
            at_f += len(PAR)
            stats.append(
                build_layer_stats(name, self._classes[i].__name__, act_host[i], par, summaries[i][1])
            )
        self.outputs = [None] * len(self.layers)
        return stats
