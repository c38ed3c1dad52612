"""``norm-zoo``: one network and task, trained once per normalization kind, for comparison.

An MLP with three hidden layers of 64 units (He-normal init, bias 0) classifies the
shipped digits (or MNIST via ``options["dataset"]``) with softmax cross-entropy and SGD
(lr 0.05, momentum 0.9), mini-batches of 64 drawn with replacement. The variants differ
only in what follows each hidden Affine:

* ``none`` -- nothing (Affine -> ReLU)
* ``batch`` -- BatchNorm1d;  ``batch-renorm`` -- BatchRenorm1d (rmax 3, dmax 5)
* ``layer`` -- LayerNorm;  ``group`` -- GroupNorm(4 groups);  ``rms`` -- RMSNorm
* ``weight`` -- weight normalization of each hidden Affine;  ``spectral`` -- spectral norm
* ``selu`` -- no normalization layer: SELU activations with LeCun-normal init
  (self-normalizing networks)

Instance norm and local response norm are left out: on (N, features) input they have
nothing to normalize over (see :data:`dualnorm.models.NORMS`). Every variant starts from
the same seed and sees the same mini-batches. ``accuracy`` is the training accuracy (eval
mode) at the end of each epoch; ``extra["test_accuracy"]`` the test accuracy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from dualnorm.backends import Backend, use_backend
from dualnorm.experiments._common import (
    BaseExperiment,
    accuracy_fn,
    dataset_from,
    sampler,
    seed_everything,
    to_backend,
)
from dualnorm.experiments.base import RunConfig
from dualnorm.losses import CrossEntropyLoss
from dualnorm.models import mlp
from dualnorm.optim import SGD
from dualnorm.records import StepRecord
from dualnorm.training import Task, train

HIDDEN = (64, 64, 64)
BATCH_SIZE = 64
MOMENTUM = 0.9


class NormZoo(BaseExperiment):
    name = "norm-zoo"
    title = "The normalization family, side by side"
    summary = "One 3x64 MLP on digits, trained once per normalization: batch, layer, group, RMS, weight, ..."
    variants = ("none", "batch", "batch-renorm", "layer", "group", "rms", "weight", "spectral", "selu")
    default_steps = 600
    default_lr = 0.05
    default_record_every = 20
    uses_dataset = True

    def _run(
        self, config: RunConfig, backend: Backend, variants: tuple[str, ...], stop: threading.Event | None
    ) -> Iterator[StepRecord]:
        data = dataset_from(config)
        x_train = to_backend(backend, data.x_train)
        x_test = to_backend(backend, data.x_test)
        spe = max(1, len(data.x_train) // BATCH_SIZE)
        for variant in variants:
            if stop is not None and stop.is_set():
                return
            rng = seed_everything(config.seed, 2)
            selu = variant == "selu"
            with use_backend(backend.name):
                model = mlp(
                    data.input_dim,
                    HIDDEN,
                    data.num_classes,
                    activation="selu" if selu else "relu",
                    norm="none" if selu else variant,
                    init="lecun" if selu else "kaiming",
                )
                loss_fn = CrossEntropyLoss()
            test_accuracy = accuracy_fn(backend, model, x_test, data.y_test)
            task = Task(
                experiment=self.name,
                variant=variant,
                model=model,
                loss_fn=loss_fn,
                optimizer=SGD(model.parameters(), lr=self.lr(config), momentum=MOMENTUM),
                batch=sampler(backend, data.x_train, data.y_train, BATCH_SIZE, rng),
                steps=self.steps(config),
                record_every=self.record_every(config),
                steps_per_epoch=spe,
                accuracy=accuracy_fn(backend, model, x_train, data.y_train),
                static_extra={"normalization": variant, "dataset": data.name},
            )
            for record in train(task, backend, stop):
                if record.accuracy is not None:
                    record.extra["test_accuracy"] = test_accuracy()
                    model.train()
                yield record
