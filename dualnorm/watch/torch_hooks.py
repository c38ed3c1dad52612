"""PyTorch models: forward hooks and output-gradient hooks, installed only for recording steps.

While armed, every recorded module (a leaf of ``named_modules()``, or a module with
parameters of its own) has a forward hook. The hook summarizes the output at once,
because a later in-place op (``out += identity``, ``ReLU(inplace=True)``) may change the
tensor itself, and hooks the output tensor for its gradient, whose squared norm is kept.
The gradient is taken by a tensor hook rather than ``register_full_backward_hook``: a full
backward hook wraps the output in a custom autograd function, and PyTorch then refuses
the in-place residual add that every ResNet block does right after its last batch norm.

Where the reductions run: tensors on CUDA or MPS are reduced on their device (a few
reductions and a histogram by ``bincount``), and at the recording step everything a
device holds (activation summaries, gradient and weight norms, gamma/beta, running
statistics, ``num_batches_tracked``) crosses to the host in one transfer. CPU tensors are
viewed as NumPy arrays (no copy) and reduced by NumPy, whose per-call cost is a fraction
of torch's for these small reductions.

After reading, the run disarms: every hook handle is removed, so between recording steps
the model runs exactly as untracked. Forwards under ``torch.no_grad()`` (an evaluation
pass) do not replace the summary of a training forward already captured for the step.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dualnorm.watch import Watcher
from dualnorm.watch._summary import (
    DEAD_KINDS,
    FIXED_RANGE,
    PAR,
    SATURATION,
    batches_tracked,
    build_layer_stats,
    host_activation_summary,
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


def _numpy(torch: Any, t: Any) -> np.ndarray:
    """A CPU tensor as a NumPy array (a view; half types widened, which NumPy lacks)."""
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def activation_summary(torch: Any, output: Any, kind: str, bins: int) -> Any:
    """The :data:`~dualnorm.watch._summary.ACT` vector of one output, computed on its device."""
    x = output.detach()
    flat = x.reshape(-1)
    if flat.numel() == 0 or not flat.is_floating_point():
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
    """Per-layer statistics of a ``torch.nn.Module`` (see the module doc).

    ``host``: reduce with NumPy on the host (default: when the model's parameters are on
    the CPU) rather than with torch on the tensors' device.
    """

    framework = "torch"
    backend_name = "torch"

    def __init__(self, model: Any, bins: int, host: bool | None = None) -> None:
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
        self.host = (first is None or first.device.type == "cpu") if host is None else host
        self._handles: list[Any] = []
        self._pars: list[list[float]] = []  # the last recorded step's parameter summaries
        self._present: list[frozenset[str]] = []
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
            on_host = self.host and out.device.type == "cpu"
            if on_host:
                self.act[i] = host_activation_summary(_numpy(torch, out), kind, self.bins)
            else:
                self.act[i] = activation_summary(torch, out, kind, self.bins)
            self._calls[i] += 1
            self.grad_sq[i] = None
            if out.requires_grad:
                call = self._calls[i]

                def grad_hook(grad: Any) -> None:
                    self.hook_calls += 1
                    if call != self._calls[i]:
                        return  # the gradient of an earlier call of a module called twice
                    if on_host:
                        g = _numpy(torch, grad).reshape(-1).astype(np.float64)
                        self.grad_sq[i] = float(np.dot(g, g))
                    else:
                        g = grad.detach().reshape(-1).to(_accumulator(torch, grad.device))
                        self.grad_sq[i] = torch.dot(g, g)

                out.register_hook(grad_hook)

        return hook

    # --- reading --------------------------------------------------------------------------------

    def _param_values(self, i: int, module: Any) -> dict[str, Any]:
        """The measured :data:`PAR` entries of one module, as tensors on their devices."""
        params = dict(module.named_parameters(recurse=False))
        grads = [p.grad.detach() for p in params.values() if p.grad is not None]
        weight = params.get("weight")
        values: dict[str, Any] = {}
        if self.grad_sq[i] is not None:
            values["grad_sq"] = self.grad_sq[i]
        if grads:
            values["param_grad_sq"] = grads
        if weight is not None:
            values["weight_sq"] = [weight.detach()]
        if isinstance(module, self._norms):
            buffers = dict(module.named_buffers(recurse=False))
            for key, t in (("gamma", weight), ("beta", params.get("bias")),
                           ("running_mean", buffers.get("running_mean")),
                           ("running_var", buffers.get("running_var")),
                           ("batches", buffers.get("num_batches_tracked"))):  # fmt: skip
                if t is not None:
                    values[key] = t.detach()
        return values

    def _host_par(self, values: dict[str, Any]) -> list[float]:
        torch = self.torch
        out = []
        for key in PAR:
            v = values.get(key)
            if v is None:
                out.append(math.nan)
            elif isinstance(v, float):
                out.append(v)
            elif isinstance(v, list):  # squared norms
                out.append(sum(float(np.square(_numpy(torch, t.cpu()), dtype=np.float64).sum()) for t in v))
            else:
                out.append(float(_numpy(torch, v.cpu()).mean(dtype=np.float64)))
        return out

    def _device_par(self, values: dict[str, Any], ref: Any) -> Any:
        torch = self.torch
        nan = torch.full((), math.nan, dtype=ref.dtype, device=ref.device)
        out = []
        for key in PAR:
            v = values.get(key)
            if v is None:
                out.append(nan)
            elif isinstance(v, list):
                out.append(sum(t.to(ref.device, ref.dtype).square().sum() for t in v))
            else:
                out.append(v.to(ref.device, ref.dtype).mean())
        return torch.stack(out)

    def layer_stats(self, grads: Any = None) -> list[Any] | None:
        """The captured step's LayerStats (None if no forward ran while armed)."""
        torch = self.torch
        if all(a is None for a in self.act):
            return None
        n = len(self.layers)
        acts: list[list[float] | None] = [a if isinstance(a, list) or a is None else None for a in self.act]
        pars: list[list[float]] = [[] for _ in range(n)]
        present: list[frozenset[str]] = []
        on_device: dict[Any, list[tuple[int, str, Any]]] = {}  # device -> what crosses in one transfer
        with torch.no_grad():
            for i, (_, module) in enumerate(self.layers):
                values = self._param_values(i, module)
                present.append(frozenset(values))
                ref = self.act[i]
                if isinstance(ref, torch.Tensor):
                    on_device.setdefault(ref.device, []).append((i, "act", ref))
                    on_device[ref.device].append((i, "par", self._device_par(values, ref)))
                else:
                    pars[i] = self._host_par(values)
            for items in on_device.values():
                flat = torch.cat([t.reshape(-1) for _, _, t in items]).cpu().tolist()  # one transfer
                at = 0
                for i, what, t in items:
                    part = flat[at : at + t.numel()]
                    at += t.numel()
                    if what == "act":
                        acts[i] = part
                    else:
                        pars[i] = part
        self._pars, self._present = pars, present
        stats = [
            build_layer_stats(name, type(module).__name__, acts[i], pars[i], present[i])
            for i, (name, module) in enumerate(self.layers)
        ]
        self._clear()
        return stats

    def extra(self) -> dict[str, Any]:
        counts = batches_tracked(self.names, self._pars, self._present) if self._pars else {}
        return {"num_batches_tracked": counts} if counts else {}
