"""The training loop every experiment uses: a generator of :class:`~dualnorm.records.StepRecord`.

One call of :func:`train` trains one variant on one backend::

    zero_grad -> forward (layer by layer) -> loss -> backward (layer by layer) -> optimizer.step

Design choices (what a consumer can rely on):

* **Records.** A record is yielded at step 1, every ``record_every`` steps and at the last
  step; it carries the loss *of that step* and full per-layer statistics. The losses of
  the steps in between are not lost: ``record.extra["losses"]`` lists the loss of every
  step since the previous record (the record's own step last), so a consumer that wants
  the per-step curve concatenates them. Loss is converted to a Python float every step
  (that is also the NaN/Inf check); on MLX that costs nothing extra because the step's
  arrays are evaluated anyway (below).
* **Lazy backends.** After every optimizer step the loop calls ``backend.eval`` on the
  loss, every parameter, every buffer (running statistics, spectral-norm vectors) and the
  optimizer state, so MLX's lazy graph never grows across steps.
* **Per-layer statistics** (see :func:`layer_stats`) are computed on the host with NumPy
  from the activations of the recorded step's forward pass and the gradients of the loss
  with respect to each layer's output, captured by running the backward pass child by
  child through the ``Sequential``. Their cost is measured: ``extra["record_s"]`` (layer
  statistics and experiment extras such as probes), ``extra["eval_s"]`` (accuracy
  evaluations) and ``extra["train_s"]`` (the training steps themselves) accumulate over
  the variant; time the consumer holds the generator suspended is in none of them.
* **Divergence.** A non-finite loss ends the variant with one record of status
  "diverged" (no layer statistics) whose message names the step; the caller moves on to
  its next variant.
* **Stop.** ``stop`` is checked before every step; when set, the generator returns.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dualnorm import nn
from dualnorm.backends import Backend
from dualnorm.nn import Sequential
from dualnorm.nn.module import Module
from dualnorm.records import LayerStats, StepRecord

__all__ = ["HIST_BINS", "Task", "layer_stats", "record_layers", "train"]

HIST_BINS = 30
SIGMOID_LOW, SIGMOID_HIGH = 0.01, 0.99
TANH_LIMIT = 0.99

# The layers whose gamma/beta and running statistics are recorded (subclasses included).
_NORM_CLASSES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.BatchRenorm1d,
    nn.BatchRenorm2d,
    nn.SyncBatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
)


@dataclass
class Task:
    """Everything :func:`train` needs for one variant.

    ``batch(step)`` returns the (input, target) backend arrays of a 1-based step.
    ``accuracy()`` (optional) is called on recorded steps that end an epoch.
    ``extra(step)`` (optional) adds entries to a recorded step's ``extra`` (e.g. a probe).
    """

    experiment: str
    variant: str
    model: Module
    loss_fn: Any
    optimizer: Any
    batch: Callable[[int], tuple[Any, Any]]
    steps: int
    record_every: int = 1
    steps_per_epoch: int = 1
    accuracy: Callable[[], float] | None = None
    extra: Callable[[int], dict[str, Any]] | None = None
    static_extra: dict[str, Any] = field(default_factory=dict)
    bins: int = HIST_BINS
    context: dict[str, Any] = field(default_factory=dict)  # the experiment's own, for on_record


def _children(model: Module) -> tuple[list[str], list[Module]]:
    if isinstance(model, Sequential):
        items = list(model.named_children())
        return [n for n, _ in items], [m for _, m in items]
    return ["0"], [model]


def _host(backend: Backend, array: Any) -> np.ndarray:
    return np.asarray(backend.to_numpy(array))


def _histogram(flat: np.ndarray, lo: float, hi: float, bins: int) -> tuple[list[int], list[float]]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [], []
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    scale = bins / (hi - lo)
    idx = ((flat - lo) * scale).astype(np.int64)
    np.clip(idx, 0, bins - 1, out=idx)
    counts = np.bincount(idx, minlength=bins)
    width = (hi - lo) / bins
    return counts.tolist(), [lo + width * i for i in range(bins)] + [hi]


def _sq_norm(backend: Backend, arrays: list[Any]) -> float | None:
    if not arrays:
        return None
    total = 0.0
    for a in arrays:
        h = _host(backend, a).astype(np.float64, copy=False).ravel()
        total += float(np.dot(h, h))
    return total


def _weight_of(module: Module) -> Any:
    weight = getattr(module, "weight", None) if "weight" in module._parameters else None
    if weight is not None:
        return weight.data
    inner = module._modules.get("")  # WeightNorm / SpectralNorm wrapper: the effective weight
    if inner is not None:
        w = getattr(inner, getattr(module, "name", "weight"), None)
        return None if w is None else w.data
    return None


def _channel_moments(a: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean and (biased) std of each channel of (N, C, *spatial) activations, over N and the positions."""
    per_channel = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1).astype(np.float64)
    mean = per_channel.mean(axis=1)
    centred = per_channel - mean[:, None]
    std = np.sqrt(np.einsum("ij,ij->i", centred, centred) / per_channel.shape[1])
    return mean.tolist(), std.tolist()


def layer_stats(
    backend: Backend,
    name: str,
    module: Module,
    output: Any,
    grad_output: Any | None,
    bins: int = HIST_BINS,
) -> LayerStats:
    """Statistics of one layer: its output activations, gradients and parameters.

    Histogram ranges: [0, 1] after a Sigmoid, [-1, 1] after a Tanh, the data's [min, max]
    otherwise; values are clipped into the end bins, so the counts always sum to the
    number of activations. Outputs laid out (N, C, *spatial) (convolutional layers) also get
    each channel's mean and std over the batch and the positions, and after a ReLU the
    fraction of channels that are zero everywhere (``dead_channel_frac``).
    """
    kind = type(module).__name__
    a = _host(backend, output)
    flat = a.reshape(-1)
    n = flat.size
    if n:
        mn, mx = float(flat.min()), float(flat.max())
        mean = float(flat.mean(dtype=np.float64))
        centred = (flat - mean).astype(np.float64, copy=False)
        std = math.sqrt(float(np.dot(centred, centred)) / n)  # np.std's generic path costs 3x this
    else:
        mn = mx = mean = std = 0.0
    saturated = dead = None
    if kind == "Sigmoid":
        lo, hi = 0.0, 1.0
        saturated = float(np.count_nonzero((flat < SIGMOID_LOW) | (flat > SIGMOID_HIGH)) / max(n, 1))
    elif kind == "Tanh":
        lo, hi = -1.0, 1.0
        saturated = float(np.count_nonzero(np.abs(flat) > TANH_LIMIT) / max(n, 1))
    else:
        lo, hi = mn, mx
    dead_channels = channel_mean = channel_std = None
    if kind in ("ReLU", "LeakyReLU") and a.ndim >= 1 and n:
        units = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
        unit_max = np.max(units, axis=0)
        dead = float(np.mean(unit_max <= 0))
        if a.ndim >= 3:  # (N, C, *spatial): a channel is dead when all its positions are
            dead_channels = float(np.mean(np.max(unit_max.reshape(a.shape[1], -1), axis=1) <= 0))
    if a.ndim >= 3 and n:
        channel_mean, channel_std = _channel_moments(a)
    counts, edges = _histogram(flat, lo, hi, bins) if n else ([], [])
    grad_norm = None
    if grad_output is not None:
        sq = _sq_norm(backend, [grad_output])
        grad_norm = math.sqrt(sq) if sq is not None else None
    p_sq = _sq_norm(backend, [p.grad for p in module.parameters() if p.grad is not None])
    weight = _weight_of(module)
    weight_norm = None if weight is None else math.sqrt(_sq_norm(backend, [weight]) or 0.0)
    stats = LayerStats(
        name=name,
        kind=kind,
        act_mean=mean,
        act_std=std,
        act_min=mn,
        act_max=mx,
        hist_counts=counts,
        hist_edges=edges,
        saturated_frac=saturated,
        dead_frac=dead,
        grad_norm=grad_norm,
        param_grad_norm=None if p_sq is None else math.sqrt(p_sq),
        weight_norm=weight_norm,
        dead_channel_frac=dead_channels,
        channel_mean=channel_mean,
        channel_std=channel_std,
    )
    if isinstance(module, _NORM_CLASSES):
        gamma = module._parameters.get("weight")
        beta = module._parameters.get("bias")
        if gamma is not None:
            stats.gamma_mean = float(_host(backend, gamma.data).mean(dtype=np.float64))
        if beta is not None:
            stats.beta_mean = float(_host(backend, beta.data).mean(dtype=np.float64))
        rm = module._buffers.get("running_mean")
        rv = module._buffers.get("running_var")
        if rm is not None:
            stats.running_mean_mean = float(_host(backend, rm).mean(dtype=np.float64))
        if rv is not None:
            stats.running_var_mean = float(_host(backend, rv).mean(dtype=np.float64))
    return stats


def record_layers(
    backend: Backend,
    names: list[str],
    children: list[Module],
    outputs: list[Any],
    grads: list[Any] | None,
    bins: int = HIST_BINS,
) -> list[LayerStats]:
    return [
        layer_stats(backend, name, module, out, None if grads is None else grads[i], bins)
        for i, (name, module, out) in enumerate(zip(names, children, outputs, strict=True))
    ]


def _state_arrays(model: Module, params: list[Any], optimizer: Any) -> list[Any]:
    arrays = [p.data for p in params]
    arrays.extend(buf for _, buf in model.named_buffers())
    state = getattr(optimizer, "state_arrays", None)
    if state is not None:
        arrays.extend(state())
    return arrays


def train(task: Task, backend: Backend, stop: threading.Event | None = None) -> Iterator[StepRecord]:
    """Train ``task`` for ``task.steps`` optimizer steps, yielding records (see the module doc)."""
    names, children = _children(task.model)
    params = list(task.model.parameters())
    loss_fn, optimizer = task.loss_fn, task.optimizer
    lazy = backend.lazy
    record_every = max(1, int(task.record_every))
    spe = max(1, int(task.steps_per_epoch))
    steps = int(task.steps)
    start = time.perf_counter()
    record_s = 0.0
    eval_s = 0.0  # accuracy evaluations
    outside_s = 0.0  # time the consumer held the generator suspended
    losses: list[float] = []
    task.model.train()
    quiet = backend.compute  # on the backend's device; NumPy: no floating-point warnings

    def base_record(step: int, loss: float, **kw: Any) -> StepRecord:
        return StepRecord(
            experiment=task.experiment,
            variant=task.variant,
            step=step,
            epoch=(step - 1) // spe + 1 if step > 0 else 0,
            loss=loss,
            backend=backend.name,
            device=backend.device,
            elapsed_s=time.perf_counter() - start,
            **kw,
        )

    for step in range(1, steps + 1):
        if stop is not None and stop.is_set():
            return
        is_record = step == 1 or step % record_every == 0 or step == steps
        with quiet():  # overflow on the way to a NaN is reported as divergence, not as warnings
            x, y = task.batch(step)
            optimizer.zero_grad()
            outputs = []
            h = x
            for child in children:
                h = child(h)
                outputs.append(h)
            loss = loss_fn(h, y)
            g = loss_fn.backward()
            grads: list[Any] | None = None
            if is_record:
                grads = [None] * len(children)
                for i in range(len(children) - 1, -1, -1):
                    grads[i] = g
                    g = children[i].backward(g)
            else:
                for child in reversed(children):
                    g = child.backward(g)
            optimizer.step()
            if lazy:
                backend.eval(loss, *_state_arrays(task.model, params, optimizer))
            value = float(loss.item())
        losses.append(value)
        if not math.isfinite(value):
            message = f"loss became {value} at step {step}; stopped this variant (try a smaller lr)"
            extra = {**task.static_extra, "losses": losses, "diverged_step": step}
            extra["record_s"], extra["train_s"] = (
                record_s,
                time.perf_counter() - start - record_s - eval_s - outside_s,
            )
            yield base_record(step, value, status="diverged", message=message, extra=extra)
            return
        if not is_record:
            continue
        t0 = time.perf_counter()
        with quiet():
            layers = record_layers(backend, names, children, outputs, grads, task.bins)
            extra = dict(task.static_extra)
            if task.extra is not None:
                extra.update(task.extra(step))
                task.model.train()
            t1 = time.perf_counter()
            record_s += t1 - t0
            accuracy = None
            if task.accuracy is not None and (step % spe == 0 or step == steps):
                accuracy = float(task.accuracy())
                task.model.train()
                eval_s += time.perf_counter() - t1
        elapsed = time.perf_counter() - start
        extra["losses"] = losses
        extra["record_s"] = record_s
        extra["eval_s"] = eval_s
        extra["train_s"] = elapsed - record_s - eval_s - outside_s
        losses = []
        record = base_record(
            step,
            value,
            accuracy=accuracy,
            layers=layers,
            status="done" if step == steps else "running",
            extra=extra,
        )
        t_out = time.perf_counter()
        yield record
        outside_s += time.perf_counter() - t_out
