"""Reference runs of the built-in demos in PyTorch and mlx.nn, for ``dualnorm compare``.

``dualnorm compare dying-relu --backends numpy,mlx-cpu,torch,mlx.nn`` runs the experiment
on dualnorm's backends and, as ``torch`` and ``mlx.nn``, the same network written in those
frameworks, so "does my MLX run match what PyTorch does?" is answered by PyTorch itself.

A reference run is made from the experiment's own task, built on NumPy exactly as
``dualnorm run`` builds it (the same seed keys, so the same data and batches):

* its model, a ``Sequential`` of Linear, BatchNorm1d and activation layers, is rebuilt
  in the framework (same sizes, eps and momentum), and its *initial weights* go across
  through the checkpoint format: ``initial-<variant>.safetensors`` in the run directory,
  written by :func:`dualnorm.save` and read by :func:`dualnorm.load`;
* it trains with the framework's own loss (MSE or cross-entropy, mean) and SGD, on the
  task's batches;
* it is tracked by :func:`dualnorm.track`'s watchers (:mod:`dualnorm.watch`) at the
  experiment's recording steps (step 1, every ``record_every``, the last), and its records
  have the experiment's shape (``extra["losses"]`` carries every step's loss), so the
  comparison lines the steps and layers up. MLX's module paths (``layers.0``) are written
  as dualnorm's Sequential names them (``0``);
* the task's accuracy and probes (init-sweep's accuracy, dying-relu's eval-mode probe) are
  measured by the task's own code on the reference's weights and running statistics,
  copied into the dualnorm model at that step.

Run one by hand: ``python -m dualnorm.references dying-relu --framework torch --out DIR``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualnorm.errors import InputError

__all__ = ["FRAMEWORKS", "ReferenceFramework", "check_reference", "reference_framework", "run_reference"]

#: compare's labels for the reference frameworks -> the module that must be importable
FRAMEWORKS = {"torch": "torch", "mlx.nn": "mlx.nn"}


@dataclass(frozen=True)
class ReferenceFramework:
    """A reference framework as ``dualnorm compare`` lists it beside the backends."""

    name: str
    device: str = "cpu"


def reference_framework(label: str) -> ReferenceFramework:
    """The framework for a compare label ("torch", "mlx.nn"); an InputError if it is not installed."""
    import importlib.util

    if label not in FRAMEWORKS:
        raise InputError(f"unknown reference framework {label!r}; choose from {', '.join(FRAMEWORKS)}")
    top = FRAMEWORKS[label].split(".")[0]
    if importlib.util.find_spec(top) is None:
        raise InputError(f"the {label} reference run needs {top}, which is not installed here")
    return ReferenceFramework(label)


# --- the model, in each framework ------------------------------------------------------------------


def _layer_spec(module: Any) -> tuple[str, dict[str, Any]]:
    """(kind, arguments) of one dualnorm layer the reference frameworks can rebuild."""
    kind = type(module).__name__
    if kind == "Linear":
        return kind, {"in": module.in_features, "out": module.out_features, "bias": module.bias is not None}
    if kind == "BatchNorm1d":
        if module.momentum is None or not module.affine or not module.track_running_stats:
            raise InputError(
                "reference runs rebuild BatchNorm1d with momentum, affine and running statistics"
            )
        return kind, {"n": module.num_features, "eps": module.eps, "momentum": module.momentum}
    if kind in ("ReLU", "Sigmoid", "Tanh", "Identity"):
        return kind, {}
    if kind == "LeakyReLU":
        return kind, {"slope": module.negative_slope}
    raise InputError(
        f"reference runs rebuild Linear, BatchNorm1d and activation layers; this experiment's model has "
        f"a {kind}. Compare it on dualnorm's backends only"
    )


def _sequential(nn: Any, batch_norm: Any, specs: list[tuple[str, dict[str, Any]]]) -> Any:
    """The layers of ``specs`` in a framework's ``nn`` (torch.nn, mlx.nn), whose 1-d batch norm is
    ``batch_norm``; every other layer has the same name and arguments in both."""
    layers = []
    for kind, a in specs:
        if kind == "Linear":
            layers.append(nn.Linear(a["in"], a["out"], bias=a["bias"]))
        elif kind == "BatchNorm1d":
            layers.append(batch_norm(a["n"], eps=a["eps"], momentum=a["momentum"]))
        elif kind == "LeakyReLU":
            layers.append(nn.LeakyReLU(a["slope"]))
        else:
            layers.append(getattr(nn, kind)())
    return nn.Sequential(*layers)


def _torch_model(specs: list[tuple[str, dict[str, Any]]]) -> Any:
    from torch import nn

    return _sequential(nn, nn.BatchNorm1d, specs)


def _mlx_model(specs: list[tuple[str, dict[str, Any]]]) -> Any:
    from mlx import nn

    return _sequential(nn, nn.BatchNorm, specs)


class _Torch:
    """A PyTorch model trained with torch's SGD and loss on the task's batches."""

    backend_name = "torch"

    def __init__(
        self, specs: list[tuple[str, dict[str, Any]]], weights: dict[str, np.ndarray], task: Any
    ) -> None:
        import torch

        self.torch = torch
        torch.manual_seed(0)
        self.model = _torch_model(specs)
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=task.optimizer.lr)
        loss = type(task.loss_fn).__name__
        self.loss_fn = {
            "MSELoss": torch.nn.functional.mse_loss,
            "CrossEntropyLoss": torch.nn.functional.cross_entropy,
        }[loss]
        self.device = "cpu"

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        torch = self.torch
        xt = torch.from_numpy(np.ascontiguousarray(x))
        yt = torch.from_numpy(np.ascontiguousarray(y))
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(xt), yt)
        loss.backward()
        self.opt.step()
        return float(loss.item())

    def grads(self) -> Any:
        return None

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}


class _MLX:
    """An mlx.nn model trained with mlx.optimizers.SGD and mlx.nn.losses on the task's batches."""

    backend_name = "mlx.nn"

    def __init__(
        self, specs: list[tuple[str, dict[str, Any]]], weights: dict[str, np.ndarray], task: Any
    ) -> None:
        import mlx.core as mx
        import mlx.optimizers as optim
        from mlx import nn

        self.mx = mx
        self.model = _mlx_model(specs)
        self.model.load_weights(
            [
                (f"layers.{k}", mx.array(v))
                for k, v in weights.items()
                if not k.endswith("num_batches_tracked")
            ]
        )
        self.model.train()
        self.opt = optim.SGD(learning_rate=task.optimizer.lr)
        kind = type(task.loss_fn).__name__
        loss = {"MSELoss": nn.losses.mse_loss, "CrossEntropyLoss": nn.losses.cross_entropy}[kind]
        self._value_and_grad = nn.value_and_grad(self.model, lambda m, x, y: loss(m(x), y, reduction="mean"))
        self._grads = None
        self.device = str(mx.default_device())

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        mx = self.mx
        loss, grads = self._value_and_grad(self.model, mx.array(x), mx.array(y))
        self.opt.update(self.model, grads)
        mx.eval(loss, self.model.parameters(), self.opt.state)
        self._grads = grads
        return float(loss.item())

    def grads(self) -> Any:
        return self._grads

    def state(self) -> dict[str, np.ndarray]:
        from mlx.utils import tree_flatten

        return {k.removeprefix("layers."): np.array(v) for k, v in tree_flatten(self.model.parameters())}


# --- one reference run ---------------------------------------------------------------------------


def _copy_into(dual_model: Any, state: dict[str, np.ndarray]) -> None:
    """The reference's weights and running statistics, into the dualnorm model (for accuracy and probes)."""
    from dualnorm.backends import get_backend

    backend = get_backend("numpy")
    current = dual_model.state_dict()
    dual_model.load_state_dict(
        {
            k: backend.asarray(np.asarray(state[k]), current[k].dtype) if k in state else v
            for k, v in current.items()
        }
    )


def _experiment(experiment: str) -> Any:
    from dualnorm.experiments import EXPERIMENTS

    if experiment not in EXPERIMENTS:
        raise InputError(
            f"reference runs (torch, mlx.nn) are made of the built-in experiments ({', '.join(EXPERIMENTS)}); "
            f"{experiment!r} is not one"
        )
    return EXPERIMENTS[experiment]


def _build_task(exp: Any, config: Any, variant: str) -> Any:
    """The variant's task on NumPy, seeded as ``dualnorm run`` seeds it (same data, same init)."""
    from dualnorm._rng import seed_everything
    from dualnorm.backends import get_backend, use_backend
    from dualnorm.experiments.base import Setup

    rng = seed_everything(config.seed, *exp.seed_keys(variant))
    setup = Setup(
        config, get_backend("numpy"), rng, exp.steps(config), exp.lr(config), exp.record_every(config)
    )
    with use_backend("numpy"):
        return exp.build_task(variant, setup)


def check_reference(experiment: str, variants: Sequence[str] | None = None) -> None:
    """An InputError, before anything runs, if ``experiment`` has no reference run."""
    from dualnorm.experiments import RunConfig

    exp = _experiment(experiment)
    config = RunConfig(backend="numpy", steps=1, variants=None if variants is None else tuple(variants))
    for variant in exp.selected_variants(config):
        for _, module in _build_task(exp, config, variant).model.named_children():
            _layer_spec(module)


def run_reference(
    experiment: str,
    framework: str,
    out: str | Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    lr: float | None = None,
    record_every: int | None = None,
    variants: Sequence[str] | None = None,
) -> Path:
    """Train ``experiment``'s variants in ``framework`` ("torch" or "mlx.nn"), recorded into run directory ``out``."""
    import dualnorm
    from dualnorm.experiments import RunConfig
    from dualnorm.records import StepRecord
    from dualnorm.tracking import RunWriter
    from dualnorm.watch import watcher_for

    reference_framework(framework)
    exp = _experiment(experiment)
    config = RunConfig(
        backend="numpy", steps=steps, seed=seed, lr=lr, record_every=record_every,
        variants=None if variants is None else tuple(variants),
    )  # fmt: skip
    exp.check_options(config)
    check_reference(experiment, variants)  # every variant, before anything is written
    chosen = exp.selected_variants(config)
    n_steps, every = exp.steps(config), exp.record_every(config)
    writer: RunWriter | None = None
    for variant in chosen:
        task = _build_task(exp, config, variant)
        specs = [_layer_spec(m) for _, m in task.model.named_children()]
        if writer is None:
            writer = RunWriter(
                out, name=f"{experiment}-{framework}", experiment=exp.name, variants=[],
                backend=framework, config={"seed": seed, "steps": n_steps, "record_every": every},
            )  # fmt: skip
        path = writer.dir / f"initial-{variant}.safetensors"
        dualnorm.save(task.model, path)  # the same initial weights, through the checkpoint format
        weights = dualnorm.load(path)
        ref = (_Torch if framework == "torch" else _MLX)(specs, weights, task)
        writer.meta["device"] = ref.device
        _train(exp.name, variant, task, ref, watcher_for(ref.model, task.bins), n_steps, writer, StepRecord)
    assert writer is not None
    writer.finish("finished")
    return writer.dir


def _train(
    experiment: str, variant: str, task: Any, ref: Any, watcher: Any, steps: int, writer: Any, StepRecord: Any
) -> None:
    every, spe = max(1, int(task.record_every)), max(1, int(task.steps_per_epoch))
    start = time.perf_counter()
    losses: list[float] = []
    for step in range(1, steps + 1):
        is_record = step == 1 or step % every == 0 or step == steps
        if is_record:
            watcher.arm()
        x, y = task.batch(step)
        with np.errstate(all="ignore"):
            loss = ref.step(np.asarray(x), np.asarray(y))
        losses.append(loss)
        base = {
            "experiment": experiment, "variant": variant, "step": step, "epoch": (step - 1) // spe + 1,
            "loss": loss, "backend": ref.backend_name, "device": ref.device,
        }  # fmt: skip
        if not math.isfinite(loss):
            watcher.disarm()
            message = f"loss became {loss} at step {step}; stopped this variant (try a smaller lr)"
            extra = {**task.static_extra, "losses": losses, "diverged_step": step}
            writer.write(StepRecord(**base, status="diverged", message=message, extra=extra,
                                    elapsed_s=time.perf_counter() - start))  # fmt: skip
            return
        if not is_record:
            continue
        layers = watcher.layer_stats(ref.grads()) or []
        watcher.disarm()
        for layer in layers:
            layer.name = layer.name.removeprefix("layers.")  # MLX's Sequential paths, as dualnorm names them
        extra = {**task.static_extra, **watcher.extra()}
        accuracy = None
        if task.extra is not None or task.accuracy is not None:
            _copy_into(task.model, ref.state())
            with np.errstate(all="ignore"):
                if task.extra is not None:
                    extra.update(task.extra(step))
                if task.accuracy is not None and (step % spe == 0 or step == steps):
                    accuracy = float(task.accuracy())
            task.model.train()
        extra["losses"] = losses
        losses = []
        writer.write(StepRecord(**base, accuracy=accuracy, layers=layers, extra=extra,
                                status="done" if step == steps else "running",
                                elapsed_s=time.perf_counter() - start))  # fmt: skip


# --- the command ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dualnorm.references", description="a built-in experiment trained in PyTorch or mlx.nn"
    )
    parser.add_argument("experiment", metavar="NAME")
    parser.add_argument("--framework", choices=list(FRAMEWORKS), required=True)
    parser.add_argument("--out", required=True, metavar="DIR", help="the run directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--record-every", type=int)
    parser.add_argument("--variants", type=lambda s: [v for v in s.split(",") if v])
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = run_reference(
            args.experiment, args.framework, args.out, seed=args.seed, steps=args.steps, lr=args.lr,
            record_every=args.record_every, variants=args.variants,
        )  # fmt: skip
    except InputError as exc:
        print(f"dualnorm: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"reference run written to {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
