"""PyTorch models: forward hooks and output-gradient hooks, installed only for recording steps.

While armed, every recorded module (a leaf of ``named_modules()``, or a module with
parameters of its own) has a forward hook. The hook summarizes the output at once, on the
output's device (a few reductions and a histogram by ``bincount``; nothing crosses to the
host), because a later in-place op (``out += identity``, ``ReLU(inplace=True)``) may
change the tensor itself. It also hooks the output tensor for its gradient, whose squared
norm is kept, also on the device. The gradient is taken by a tensor hook rather than
``register_full_backward_hook``: a full backward hook wraps the output in a custom
autograd function, and PyTorch then refuses the in-place residual add that every ResNet
block does right after its last batch norm.

At the recording step the run reads the summaries and the parameters (gradient and weight
norms, gamma/beta, running statistics, ``num_batches_tracked``), reduced on the device as
well, and brings them to the host in one transfer per device. Then it disarms: every hook
handle is removed, so between recording steps the model runs exactly as untracked.

Forwards under ``torch.no_grad()`` (an evaluation pass) do not replace the summary of a
training forward already captured for the step.
"""

from __future__ import annotations

import math
from typing import Any

from dualnorm.watch import Watcher
from dualnorm.watch._summary import (
    DEAD_KINDS,
    FIXED_RANGE,
    PAR,
    SATURATION,
    batches_tracked,
    build_layer_stats,
    recorded_layers,
)


def _norm_classes(nn: Any) -> tuple[type, ...]:
    from torch.nn.modules.batchnorm import _NormBase  # BatchNorm*, SyncBatchNorm, InstanceNorm*

    classes = [_NormBase, nn.GroupNorm, nn.LayerNorm]
    if hasattr(nn, "RMSNorm"):
        classes.append(nn.RMSNorm)
    return tuple(classes)


def _accumulator(torch: Any, device: Any) -> Any:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _first_tensor(torch: Any, output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


def activation_summary(torch: Any, output: Any, kind: str, bins: int) -> Any:
    """The :data:`~dualnorm.watch._summary.ACT` vector of one output, computed on its device."""
    x = output.detach()
    flat = x.reshape(-1)
    n = flat.numel()
    if n == 0 or not (flat.is_floating_point() or flat.is_complex()):
        return None
    xf = flat.to(_accumulator(torch, flat.device))
    var, mean = torch.var_mean(xf, correction=0)
    lo, hi = torch.aminmax(xf)
    nan = torch.full_like(mean, math.nan)
    std, mn, mx = var.sqrt(), lo, hi
    if kind in FIXED_RANGE:
        lo, hi = (torch.full_like(mean, v) for v in FIXED_RANGE[kind])
        low, high = SATURATION[kind]
        saturated = ((xf < low) | (xf > high)).to(xf.dtype).mean()
    else:
        same = hi <= lo
        lo, hi = torch.where(same, lo - 0.5, lo), torch.where(same, hi + 0.5, hi)
        saturated = nan
    dead = nan
    if kind in DEAD_KINDS:
        units = xf.reshape(x.shape[0], -1) if x.dim() > 1 else xf.reshape(-1, 1)
        dead = (units.amax(dim=0) <= 0).to(xf.dtype).mean()
    index = ((xf - lo) * (bins / (hi - lo))).nan_to_num(0.0).clamp(0, bins - 1).long()
    counts = torch.bincount(index, minlength=bins)[:bins].to(xf.dtype)
    return torch.cat([torch.stack([mean, std, mn, mx, saturated, dead, lo, hi]), counts])


class TorchWatcher(Watcher):
    """Per-layer statistics of a ``torch.nn.Module`` (see the module doc)."""

    framework = "torch"
    backend_name = "torch"

    def __init__(self, model: Any, bins: int) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.bins = bins
        self.layers = recorded_layers(
            model.named_modules(),
            lambda m: any(True for _ in m.children()),
            lambda m: any(True for _ in m.parameters(recurse=False)),
        )
        self.names = [name for name, _ in self.layers]
        self._norms = _norm_classes(torch.nn)
        first = next(model.parameters(), None)
        self.device = str(first.device) if first is not None else "cpu"
        self._handles: list[Any] = []
        self._pars: list[list[float]] = []  # the last recorded step's parameter summaries
        self._clear()

    def _clear(self) -> None:
        n = len(self.layers)
        self.act: list[Any] = [None] * n
        self.grad_sq: list[Any] = [None] * n
        self._calls = [0] * n  # forward calls while armed: a module called twice keeps its last

    # --- arming ---------------------------------------------------------------------------------

    def arm(self) -> None:
        if self.armed:
            return
        self._clear()
        self._handles = [
            module.register_forward_hook(self._forward_hook(i)) for i, (_, module) in enumerate(self.layers)
        ]
        self.armed = True

    def disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.armed = False

    def _forward_hook(self, i: int) -> Any:
        torch = self.torch
        kind = type(self.layers[i][1]).__name__

        def hook(module: Any, args: Any, output: Any) -> None:
            self.hook_calls += 1
            out = _first_tensor(torch, output)
            if out is None or (not torch.is_grad_enabled() and self.act[i] is not None):
                return
            self.act[i] = activation_summary(torch, out, kind, self.bins)
            self._calls[i] += 1
            self.grad_sq[i] = None
            if out.requires_grad:
                call = self._calls[i]

                def grad_hook(grad: Any) -> None:
                    self.hook_calls += 1
                    if call == self._calls[i]:
                        g = grad.detach().to(_accumulator(torch, grad.device))
                        self.grad_sq[i] = torch.dot(g.reshape(-1), g.reshape(-1))

                out.register_hook(grad_hook)

        return hook

    # --- reading --------------------------------------------------------------------------------

    def _param_summary(self, i: int, module: Any, ref: Any) -> tuple[Any, frozenset[str]]:
        """The :data:`PAR` vector of one module, on ``ref``'s device and dtype, and its measured keys."""
        torch = self.torch
        nan = torch.full((), math.nan, dtype=ref.dtype, device=ref.device)

        def sq(tensors: list[Any]) -> Any:
            if not tensors:
                return nan
            return sum(t.detach().to(ref.dtype).square().sum() for t in tensors)

        def mean(t: Any) -> Any:
            return nan if t is None else t.detach().to(ref.dtype).mean()

        params = dict(module.named_parameters(recurse=False))
        grads = [p.grad for p in params.values() if p.grad is not None]
        weight = params.get("weight")
        values = {
            "grad_sq": nan if self.grad_sq[i] is None else self.grad_sq[i].to(ref.device, ref.dtype),
            "param_grad_sq": sq(grads),
            "weight_sq": nan if weight is None else sq([weight]),
            "gamma": nan,
            "beta": nan,
            "running_mean": nan,
            "running_var": nan,
            "batches": nan,
        }
        if isinstance(module, self._norms):
            buffers = dict(module.named_buffers(recurse=False))
            values["gamma"] = mean(weight)
            values["beta"] = mean(params.get("bias"))
            values["running_mean"] = mean(buffers.get("running_mean"))
            values["running_var"] = mean(buffers.get("running_var"))
            values["batches"] = mean(buffers.get("num_batches_tracked"))
        present = frozenset(k for k, v in values.items() if v is not nan)
        return torch.stack([values[k] for k in PAR]), present

    def layer_stats(self, grads: Any = None) -> list[Any] | None:
        """The captured step's LayerStats (None if no forward ran while armed)."""
        torch = self.torch
        if all(a is None for a in self.act):
            return None
        # one flat vector per device: activation summaries then parameter summaries
        pieces: dict[Any, list[tuple[int, str, Any]]] = {}
        self._present: list[frozenset[str]] = [frozenset()] * len(self.layers)
        with torch.no_grad():
            for i, (_, module) in enumerate(self.layers):
                ref = self.act[i]
                if ref is None:
                    first = next(module.parameters(recurse=False), None)
                    device = first.device if first is not None else torch.device("cpu")
                    ref = torch.empty(0, dtype=_accumulator(torch, device), device=device)
                else:
                    pieces.setdefault(ref.device, []).append((i, "act", ref))
                vector, self._present[i] = self._param_summary(i, module, ref)
                pieces.setdefault(ref.device, []).append((i, "par", vector))
            host: dict[tuple[int, str], list[float]] = {}
            for items in pieces.values():
                flat = torch.cat([t.reshape(-1) for _, _, t in items]).cpu().tolist()  # one transfer
                at = 0
                for i, what, t in items:
                    host[(i, what)] = flat[at : at + t.numel()]
                    at += t.numel()
        self._pars = [host[(i, "par")] for i in range(len(self.layers))]
        stats = [
            build_layer_stats(
                name, type(module).__name__, host.get((i, "act")), self._pars[i], self._present[i]
            )
            for i, (name, module) in enumerate(self.layers)
        ]
        self._clear()
        return stats

    def extra(self) -> dict[str, Any]:
        counts = batches_tracked(self.names, self._pars, self._present) if self._pars else {}
        return {"num_batches_tracked": counts} if counts else {}
