"""``simple-cnn``: the seed's SimpleCNN trained on CIFAR-10, as PyTorch's CIFAR-10 tutorial does it.

The notes' recipe (seeds 001 and 004): images normalized per channel, the SimpleCNN of note 001
(three Conv2d -> LocalResponseNorm -> ReLU -> MaxPool2d blocks, then two Linear layers),
softmax cross-entropy, SGD with momentum 0.9 (lr 0.01), the learning rate stepped down by 10x
every 7 epochs (``StepLR(step_size=7, gamma=0.1)``), shuffled mini-batches of 64, and the test
accuracy after every epoch.

``options["cifar10"]`` is the path of the extracted CIFAR-10 (python or binary version, see
:func:`dualnorm.data.load_cifar10`); ``dualnorm run simple-cnn --cifar10 PATH``. Without it the
run is a short check on random images (random labels: the accuracy means nothing) that the
network builds, trains and evaluates on this backend, and the first record says so.

Variants are the normalization after each convolution: ``lrn`` (the seed's), ``batch``, ``group``,
``instance``, ``layer`` and ``none``; only ``lrn`` runs unless ``variants`` names others. The
default length is 10 epochs (``steps``: optimizer steps in all). Every record that ends an epoch
has ``accuracy`` (test accuracy, eval mode) and ``extra["print"]``: the epoch's line, ``epoch
E/N  train loss L  test acc A  lr R  S s``, which ``dualnorm run`` prints as it comes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dualnorm.data import CIFAR10_MEAN, CIFAR10_STD, Dataset, normalize
from dualnorm.errors import InputError
from dualnorm.experiments._images import accuracy, epoch_batches, steps_per_epoch
from dualnorm.experiments.base import Experiment, RunConfig, Setup
from dualnorm.losses import CrossEntropyLoss
from dualnorm.lr_scheduler import StepLR
from dualnorm.models import simple_cnn
from dualnorm.optim import SGD
from dualnorm.records import StepRecord
from dualnorm.training import Task

BATCH_SIZE = 64
EPOCHS = 10
MOMENTUM = 0.9
STEP_SIZE, GAMMA = 7, 0.1  # the seed's StepLR
EVAL_CHUNK = 500
# The check on random input: small enough to run in seconds on NumPy.
CHECK_TRAIN, CHECK_TEST, CHECK_EPOCHS = 128, 64, 2

NEEDS = (
    "simple-cnn trains on CIFAR-10: pass --cifar10 PATH (the extracted cifar-10-batches-py or "
    "cifar-10-batches-bin directory from https://www.cs.toronto.edu/~kriz/cifar.html; nothing is downloaded)"
)


class SimpleCNNExperiment(Experiment):
    name = "simple-cnn"
    blas_threads = None  # (64, 288) x (288, 65536) products at batch 64: let BLAS use its threads
    title = "The seeds' SimpleCNN (LRN) on CIFAR-10"
    summary = "SimpleCNN (3 conv blocks with LRN) on CIFAR-10 (--cifar10 PATH); SGD+momentum, StepLR(7, 0.1)"
    variants = ("lrn", "batch", "group", "instance", "layer", "none")
    default_variants = ("lrn",)
    default_steps = EPOCHS * steps_per_epoch(50_000, BATCH_SIZE)
    default_lr = 0.01
    default_record_every = (
        46  # what record_every() picks for CIFAR-10: the largest divisor of 782 up to 782 // 8
    )
    option_names = ("cifar10",)

    def __init__(self) -> None:
        self._data: dict[str, Dataset] = {}

    # -- data ------------------------------------------------------------------------------------

    def data(self, config: RunConfig) -> Dataset:
        """CIFAR-10 normalized per channel (cached per path), or the random check's images."""
        path = config.options.get("cifar10")
        key = str(path) if path else f"random:{config.seed}"
        if key not in self._data:
            if path:
                from dualnorm.data import load_cifar10

                ds = load_cifar10(path)
                self._data.clear()  # one CIFAR-10 in memory at a time (600 MB of float32)
            else:
                rng = np.random.default_rng(config.seed)
                ds = Dataset(
                    x_train=rng.uniform(0, 1, (CHECK_TRAIN, 3, 32, 32)).astype(np.float32),
                    y_train=rng.integers(0, 10, CHECK_TRAIN),
                    x_test=rng.uniform(0, 1, (CHECK_TEST, 3, 32, 32)).astype(np.float32),
                    y_test=rng.integers(0, 10, CHECK_TEST),
                    name="random",
                    num_classes=10,
                    input_dim=3 * 32 * 32,
                    image_shape=(3, 32, 32),
                )
            ds = Dataset(
                x_train=normalize(ds.x_train, CIFAR10_MEAN, CIFAR10_STD, inplace=True),
                y_train=ds.y_train,
                x_test=normalize(ds.x_test, CIFAR10_MEAN, CIFAR10_STD, inplace=True),
                y_test=ds.y_test,
                name=ds.name,
                num_classes=ds.num_classes,
                input_dim=ds.input_dim,
                image_shape=ds.image_shape,
            )
            self._data[key] = ds
        return self._data[key]

    def _spe(self, config: RunConfig) -> int:
        return steps_per_epoch(len(self.data(config).x_train), BATCH_SIZE)

    # -- config ----------------------------------------------------------------------------------

    def check_options(self, config: RunConfig) -> None:
        super().check_options(config)
        path = config.options.get("cifar10")
        if path is not None and not isinstance(path, (str, bytes)) and not hasattr(path, "__fspath__"):
            raise InputError(f"simple-cnn: options['cifar10'] must be a path, got {type(path).__name__}")
        self.data(config)  # a bad path fails here, before the first record, as a DatasetError

    def selected_variants(self, config: RunConfig) -> tuple[str, ...]:
        if config.variants is None:
            return self.default_variants
        return super().selected_variants(config)

    def steps(self, config: RunConfig) -> int:
        if config.steps is not None:
            return super().steps(config)
        epochs = EPOCHS if config.options.get("cifar10") else CHECK_EPOCHS
        return epochs * self._spe(config)

    def record_every(self, config: RunConfig) -> int:
        if config.record_every is not None:
            return super().record_every(config)
        # the largest divisor of an epoch's steps up to ~1/8 epoch: epoch ends are recorded steps
        spe = self._spe(config)
        return max(d for d in range(1, max(1, spe // 8) + 1) if spe % d == 0)

    # -- the task --------------------------------------------------------------------------------

    def build_task(self, variant: str, setup: Setup) -> Task:
        config, backend = setup.config, setup.backend
        data = self.data(config)
        model = simple_cnn(None if variant == "none" else variant)
        optimizer = SGD(model.parameters(), lr=setup.lr, momentum=MOMENTUM)
        scheduler = StepLR(optimizer, step_size=STEP_SIZE, gamma=GAMMA)
        spe = self._spe(config)
        batches = epoch_batches(backend, data.x_train, data.y_train, BATCH_SIZE, setup.rng)

        def batch(step: int) -> tuple[Any, Any]:
            if step > 1 and (step - 1) % spe == 0:
                scheduler.step()  # an epoch ended: as scheduler.step() after each epoch's loop
            return batches(step)

        return Task(
            experiment=self.name,
            variant=variant,
            model=model,
            loss_fn=CrossEntropyLoss(),
            optimizer=optimizer,
            batch=batch,
            steps=setup.steps,
            record_every=setup.record_every,
            steps_per_epoch=spe,
            accuracy=lambda: accuracy(backend, model, data.x_test, data.y_test, chunk=EVAL_CHUNK),
            static_extra={"normalization": variant, "dataset": data.name},
            context={
                "scheduler": scheduler,
                "epochs": -(-setup.steps // spe),
                "epoch_losses": [],
                "epoch_start": time.perf_counter(),
                "random": data.name == "random",
            },
        )

    def on_record(self, record: StepRecord, task: Task) -> StepRecord:
        ctx = task.context
        ctx["epoch_losses"].extend(record.extra.get("losses", ()))
        record.extra["lr"] = ctx["scheduler"].get_last_lr()[0]
        lines = []
        if record.step == 1 and ctx["random"]:
            lines.append(
                f"{NEEDS}. Running a short check on {CHECK_TRAIN} random images instead "
                f"({task.steps} steps; the accuracy of random labels means nothing)."
            )
        if record.accuracy is not None:
            now = time.perf_counter()
            losses = ctx["epoch_losses"]
            train_loss = float(np.mean(losses)) if losses else float("nan")
            seconds = now - ctx["epoch_start"]
            record.extra.update(train_loss=train_loss, epoch_s=seconds)
            lines.append(
                f"[{task.variant}] epoch {record.epoch}/{ctx['epochs']}  train loss {train_loss:.4f}  "
                f"test acc {record.accuracy:.4f}  lr {record.extra['lr']:.4g}  {seconds:.1f} s"
            )
            ctx["epoch_losses"], ctx["epoch_start"] = [], now
        if lines:
            record.extra["print"] = "\n".join(lines)
        return record
