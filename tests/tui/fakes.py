"""Deterministic, fast stand-ins for the real experiments (same contract, same record shapes)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

from dualnorm.experiments.base import Experiment, RunConfig
from dualnorm.records import LayerStats, StepRecord

HIST_BINS = 20


def _hist(center: float, spread: float, n: int = 640) -> tuple[list[int], list[float]]:
    edges = [i / HIST_BINS for i in range(HIST_BINS + 1)]
    counts = []
    for i in range(HIST_BINS):
        mid = (edges[i] + edges[i + 1]) / 2
        counts.append(round(n / HIST_BINS * 3 * math.exp(-((mid - center) ** 2) / (2 * spread**2))))
    return counts, edges


class FakeExperiment(Experiment):
    """``kind`` picks the record shape: relu (probe), sigmoid (histograms), sweep, diverge."""

    def __init__(
        self,
        name: str,
        kind: str,
        *,
        variants: tuple[str, ...] = ("plain", "batchnorm"),
        steps: int = 60,
        delay: float = 0.0,
        summary: str | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.title = f"Fake {kind}"
        self.summary = summary or f"fake {kind} experiment for the TUI tests"
        self.variants = variants
        self.default_steps = steps
        self.default_lr = 0.01
        self.default_record_every = 1
        if kind == "sweep":  # as init-sweep's
            self.grid_title = "training accuracy per weight scale: BN solid green, plain dotted red"
        self.delay = delay

    # ----------------------------------------------------------------------------------------

    def run(self, config: RunConfig, stop: threading.Event | None = None) -> Iterator[StepRecord]:
        steps = config.steps or self.default_steps
        lr = config.lr or self.default_lr
        backend = config.backend or "numpy"
        variants = config.variants or self.variants
        for vi, variant in enumerate(variants):
            for step in range(1, steps + 1):
                if stop is not None and stop.is_set():
                    return
                if self.delay:
                    time.sleep(self.delay)
                rec = self._record(variant, vi, step, steps, lr, config.seed, backend)
                yield rec
                if rec.status == "diverged":
                    break

    def _record(
        self, variant: str, vi: int, step: int, steps: int, lr: float, seed: int, backend: str
    ) -> StepRecord:
        bn = "batchnorm" in variant or variant.endswith("-bn")
        wobble = 0.05 * math.sin(step * 0.7 + seed)
        status = "done" if step == steps else "running"
        extra: dict = {}
        accuracy = None
        message = ""
        if self.kind == "relu":
            loss = 3.34e5 if not bn else 3.34e5 * math.exp(-step * lr * 20) * (1 + wobble) + 1e-3
            w = -10.0 + (step * lr * 5 if bn else 0.0)
            after_linear = [w * x for x in range(1, 6)]
            after_bn = None
            if bn:
                m = sum(after_linear) / 5
                s = math.sqrt(sum((a - m) ** 2 for a in after_linear) / 5) or 1.0
                after_bn = [(a - m) / s for a in after_linear]
            after_relu = [max(0.0, a) for a in (after_bn or after_linear)]
            extra["probe"] = {
                "input": [1.0, 2.0, 3.0, 4.0, 5.0],
                "after_linear": after_linear,
                "after_bn": after_bn,
                "after_relu": after_relu,
            }
            layers = [
                LayerStats(
                    "0",
                    "Linear",
                    -5000.0 + step,
                    2800.0,
                    -10000.0,
                    -10.0,
                    weight_norm=abs(w),
                    grad_norm=0.0 if not bn else 1.0 / step,
                ),
            ]
            if bn:
                layers.append(
                    LayerStats(
                        "1",
                        "BatchNorm1d",
                        0.0,
                        1.0,
                        -1.7,
                        1.7,
                        gamma_mean=1 + step * 1e-3,
                        beta_mean=step * 1e-3,
                        grad_norm=0.5 / step,
                        weight_norm=1.0,
                    )
                )
            layers.append(
                LayerStats(
                    str(len(layers)),
                    "ReLU",
                    0.0 if not bn else 0.4,
                    0.0 if not bn else 0.6,
                    0.0,
                    0.0 if not bn else 1.7,
                    dead_frac=1.0 if not bn else 0.5,
                    grad_norm=0.0 if not bn else 0.3 / step,
                )
            )
        elif self.kind == "sigmoid":
            loss = 1.0 / (1 + step * (0.5 if bn else 0.05)) * (1 + wobble)
            layers = []
            for i in range(5):
                center = 0.5 if bn else (0.08 if i % 2 else 0.92)
                spread = 0.15 + 0.002 * step if bn else 0.05
                counts, edges = _hist(center, spread)
                layers.append(
                    LayerStats(
                        str(2 * i + 1),
                        "Sigmoid",
                        center,
                        spread,
                        0.0,
                        1.0,
                        hist_counts=counts,
                        hist_edges=edges,
                        saturated_frac=0.0 if bn else 0.35 + 0.03 * i,
                        grad_norm=(0.25 ** (5 - i)) * (1 + wobble),
                        weight_norm=8.0 + i,
                        gamma_mean=1.0 if bn else None,
                        beta_mean=0.0 if bn else None,
                    )
                )
        elif self.kind == "sweep":
            index = vi // 2
            scale = 10 ** (-4 * index / 15)
            good = bn or 2 <= index <= 6
            accuracy = min(0.99, 0.1 + (0.85 if good else 0.0) * step / steps)
            loss = 2.3 * (1 - accuracy) + 0.01 * wobble
            extra = {"scale": scale, "scale_index": index, "normalization": "batchnorm" if bn else "none"}
            layers = [
                LayerStats(
                    f"hidden.{i}",
                    "ReLU",
                    0.3,
                    0.5,
                    0.0,
                    2.0,
                    dead_frac=0.1 if bn else 0.6,
                    grad_norm=0.01 * (i + 1),
                )
                for i in range(2)
            ]
        elif self.kind == "diverge":
            if bn:
                loss = 1.0 / step
            else:
                loss = float("nan") if step >= steps // 2 else math.exp(step / 3)
                if not math.isfinite(loss):
                    status, message = "diverged", f"loss is nan at step {step}"
            layers = [LayerStats("0", "Linear", 0.1, 1.0, -3.0, 3.0, grad_norm=loss, weight_norm=2.0)]
        else:
            raise ValueError(self.kind)
        return StepRecord(
            experiment=self.name,
            variant=variant,
            step=step,
            epoch=(step - 1) // 10 + 1,
            loss=loss,
            backend=backend,
            accuracy=accuracy,
            layers=layers,
            elapsed_s=step * 1e-3,
            status=status,
            message=message,
            extra=extra,
        )


SWEEP_VARIANTS = tuple(f"s{i:02d}-{norm}" for i in range(16) for norm in ("batchnorm", "plain"))


def fake_experiments(steps: int = 60, delay: float = 0.0) -> dict[str, Experiment]:
    exps = [
        FakeExperiment(
            "dying-relu", "relu", steps=steps, delay=delay, summary="Fake: BN rescues a dying ReLU"
        ),
        FakeExperiment("sigmoid-depth", "sigmoid", steps=steps, delay=delay),
        FakeExperiment("init-sweep", "sweep", variants=SWEEP_VARIANTS, steps=max(2, steps // 6), delay=delay),
        FakeExperiment("diverge", "diverge", steps=steps, delay=delay),
    ]
    return {e.name: e for e in exps}


class FakeCompareJob:
    """A finished :class:`dualnorm.compare.CompareJob` without processes: one run directory per
    backend label, written from a fake experiment, each child ended with exit code 0."""

    def __init__(self, root, labels=("numpy", "mlx-cpu"), steps: int = 20) -> None:
        from types import SimpleNamespace

        from dualnorm.experiments.base import RunConfig
        from dualnorm.tracking import RunWriter

        self.experiment = "dying-relu"
        self.children = {label: SimpleNamespace(code=0, stderr="", wall_s=0.5) for label in labels}
        self.run_dirs = {}
        exp = FakeExperiment("dying-relu", "relu", variants=("batchnorm",), steps=steps)
        for label in labels:
            writer = RunWriter(root / label, name=label, experiment=exp.name, backend="numpy")
            for rec in exp.run(RunConfig(backend="numpy")):
                writer.write(rec)
            writer.finish()
            self.run_dirs[label] = root / label

    def annotate(self, live) -> None:
        from dualnorm.compare import CompareJob

        CompareJob.annotate(self, live)
