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

from dualnorm.experiments._common import (
    BaseExperiment,
    accuracy_fn,
    dataset_from,
    sampler,
    to_backend,
)
from dualnorm.experiments.base import Setup
from dualnorm.losses import CrossEntropyLoss
from dualnorm.models import mlp
from dualnorm.optim import SGD
from dualnorm.records import StepRecord
from dualnorm.training import Task

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
    blas_threads = 1  # (100, 100)-sized products: no thread pool
    uses_dataset = True

    def seed_keys(self, variant: str) -> tuple[int, ...]:
        return (2,)  # every variant: the same init draws and mini-batches

    def build_task(self, variant: str, setup: Setup) -> Task:
        backend = setup.backend
        data = dataset_from(setup.config)
        selu = variant == "selu"
        model = mlp(
            data.input_dim,
            HIDDEN,
            data.num_classes,
            activation="selu" if selu else "relu",
            norm="none" if selu else variant,
            init="lecun" if selu else "kaiming",
        )
        return Task(
            experiment=self.name,
            variant=variant,
            model=model,
            loss_fn=CrossEntropyLoss(),
            optimizer=SGD(model.parameters(), lr=setup.lr, momentum=MOMENTUM),
            batch=sampler(backend, data.x_train, data.y_train, BATCH_SIZE, setup.rng),
            steps=setup.steps,
            record_every=setup.record_every,
            steps_per_epoch=max(1, len(data.x_train) // BATCH_SIZE),
            accuracy=accuracy_fn(backend, model, to_backend(backend, data.x_train), data.y_train),
            static_extra={"normalization": variant, "dataset": data.name},
            context={
                "test_accuracy": accuracy_fn(backend, model, to_backend(backend, data.x_test), data.y_test)
            },
        )

    def on_record(self, record: StepRecord, task: Task) -> StepRecord:
        if record.accuracy is not None:
            record.extra["test_accuracy"] = task.context["test_accuracy"]()
            task.model.train()
        return record
