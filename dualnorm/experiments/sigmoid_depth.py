"""``sigmoid-depth``: a deep sigmoid net saturates and its gradients vanish; batch norm fixes both.

Two views, four variants:

* ``forward-plain`` / ``forward-batchnorm`` -- the documents' forward pass, seeded exactly as
  they are: ``np.random.seed(0); X = np.random.rand(100, 20)``; five layers 20->64->...->64
  with ``W = randn(in, out)``, ``b = randn(out)`` (all W first, then all b), sigmoid after
  each, optionally batch norm (batch statistics, eps 1e-8, gamma 1, beta 0) before each
  sigmoid. One record (step 0, loss 0.0, status "done") with each layer's statistics and
  histogram; ``extra["mean_var"]`` holds each sigmoid layer's (mean, variance) as the
  document prints them and ``extra["saturated"]`` the fraction below 0.01 or above 0.99.
  ``RunConfig.seed`` replaces the document's seed 0.
* ``plain`` / ``batchnorm`` -- the same architecture (5x64 sigmoid, every weight and bias
  ~ N(0, 1)) trained as a classifier on the shipped digits (or MNIST via
  ``options["dataset"]``) with softmax cross-entropy and plain SGD, mini-batches of 100
  drawn with replacement. The per-layer ``grad_norm`` shows the vanishing gradient:
  ``extra["sigmoid_input_grad_norms"]`` lists, for each of the five sigmoids, the norm of
  the loss gradient at that sigmoid's *input* (the Linear output without BN, the BN
  output with it): the signal the vanishing sigmoid derivative multiplies. Without BN the
  first one is about half as large (the saturated sigmoids pass little gradient back). ``accuracy`` is the training accuracy (eval mode)
  on recorded steps that end an epoch (an epoch = len(train) // 100 steps).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

from dualnorm import init as dinit
from dualnorm import nn
from dualnorm.backends import Backend, use_backend
from dualnorm.experiments._common import (
    BaseExperiment,
    accuracy_fn,
    dataset_from,
    sampler,
    to_backend,
)
from dualnorm.experiments.base import RunConfig, Setup
from dualnorm.losses import CrossEntropyLoss
from dualnorm.optim import SGD
from dualnorm.records import StepRecord
from dualnorm.training import Task, record_layers

LAYER_SIZES = (20, 64, 64, 64, 64, 64)
N_SAMPLES = 100
BN_EPS = 1e-8
HIDDEN = 64
DEPTH = 5
BATCH_SIZE = 100


def document_arrays(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """X, Ws, bs drawn exactly as the document (``np.random.seed(seed)`` and the same call order)."""
    rs = np.random.RandomState(seed)
    x = rs.rand(N_SAMPLES, LAYER_SIZES[0])
    ws = [rs.randn(LAYER_SIZES[i], LAYER_SIZES[i + 1]) for i in range(len(LAYER_SIZES) - 1)]
    bs = [rs.randn(LAYER_SIZES[i + 1]) for i in range(len(LAYER_SIZES) - 1)]
    return x, ws, bs


def build_forward_model(ws: list[np.ndarray], bs: list[np.ndarray], batchnorm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w, b in zip(ws, bs, strict=True):
        linear = nn.Linear(w.shape[0], w.shape[1])
        linear.weight.data = linear.backend.asarray(w.T, linear.dtype)  # ours is (out, in)
        linear.bias.data = linear.backend.asarray(b, linear.dtype)
        layers.append(linear)
        if batchnorm:
            layers.append(nn.BatchNorm1d(w.shape[1], eps=BN_EPS))
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def build_train_model(in_features: int, classes: int, batchnorm: bool) -> nn.Sequential:
    """5 x (Linear(., 64) [-> BatchNorm1d] -> Sigmoid) -> Linear(64, classes); W, b ~ N(0, 1)."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(DEPTH):
        linear = nn.Linear(width, HIDDEN)
        dinit.normal_(linear.weight, 0.0, 1.0)
        dinit.normal_(linear.bias, 0.0, 1.0)
        layers.append(linear)
        if batchnorm:
            layers.append(nn.BatchNorm1d(HIDDEN, eps=BN_EPS))
        layers.append(nn.Sigmoid())
        width = HIDDEN
    head = nn.Linear(width, classes)
    dinit.normal_(head.weight, 0.0, 1.0)
    dinit.normal_(head.bias, 0.0, 1.0)
    layers.append(head)
    return nn.Sequential(*layers)


class SigmoidDepth(BaseExperiment):
    name = "sigmoid-depth"
    title = "Deep sigmoid net: saturation and vanishing gradients"
    summary = "5x64 sigmoid net with std-1 weights: ~40% saturated deep activations without BN, ~0 with"
    variants = ("forward-plain", "forward-batchnorm", "plain", "batchnorm")
    default_steps = 1500
    default_lr = 0.1
    default_record_every = 30
    blas_threads = 1  # (100, 100)-sized products: no thread pool
    uses_dataset = True

    def seed_keys(self, variant: str) -> tuple[int, ...]:
        return (1,)

    def run_variant(
        self, variant: str, config: RunConfig, backend: Backend, stop: threading.Event | None
    ) -> Iterator[StepRecord]:
        if variant.startswith("forward-"):
            yield self._forward_view(config, backend, variant)
        else:
            yield from super().run_variant(variant, config, backend, stop)

    def _forward_view(self, config: RunConfig, backend: Backend, variant: str) -> StepRecord:
        import time

        start = time.perf_counter()
        x_host, ws, bs = document_arrays(config.seed)
        with use_backend(backend.name):
            model = build_forward_model(ws, bs, batchnorm=variant.endswith("batchnorm"))
        outputs = []
        h = to_backend(backend, x_host)
        for layer in model:
            h = layer(h)
            outputs.append(h)
        backend.eval(*outputs)
        names = [n for n, _ in model.named_children()]
        layers = record_layers(backend, names, list(model), outputs, None)
        sig = [s for s in layers if s.kind == "Sigmoid"]
        return StepRecord(
            experiment=self.name,
            variant=variant,
            step=0,
            epoch=0,
            loss=0.0,
            backend=backend.name,
            device=backend.device,
            layers=layers,
            elapsed_s=time.perf_counter() - start,
            status="done",
            message="forward pass only (the document's seeded demo); loss is not defined here",
            extra={
                "forward_only": True,
                "normalization": "batchnorm" if variant.endswith("batchnorm") else "none",
                "mean_var": [[s.act_mean, s.act_std**2] for s in sig],
                "saturated": [s.saturated_frac for s in sig],
            },
        )

    def build_task(self, variant: str, setup: Setup) -> Task:
        backend = setup.backend
        data = dataset_from(setup.config)
        batchnorm = variant == "batchnorm"
        model = build_train_model(data.input_dim, data.num_classes, batchnorm)
        return Task(
            experiment=self.name,
            variant=variant,
            model=model,
            loss_fn=CrossEntropyLoss(),
            optimizer=SGD(model.parameters(), lr=setup.lr),
            batch=sampler(backend, data.x_train, data.y_train, BATCH_SIZE, setup.rng),
            steps=setup.steps,
            record_every=setup.record_every,
            steps_per_epoch=max(1, len(data.x_train) // BATCH_SIZE),
            accuracy=accuracy_fn(backend, model, to_backend(backend, data.x_train), data.y_train),
            static_extra={"normalization": "batchnorm" if batchnorm else "none", "dataset": data.name},
        )

    def on_record(self, record: StepRecord, task: Task) -> StepRecord:
        if record.layers:
            record.extra["sigmoid_input_grad_norms"] = [
                record.layers[i - 1].grad_norm
                for i, layer in enumerate(record.layers)
                if layer.kind == "Sigmoid" and i > 0
            ]
        return record
