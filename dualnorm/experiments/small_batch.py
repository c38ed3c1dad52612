"""``small-batch``: batch norm against group norm against none at batch sizes 2, 4, 8 and 32 (Wu & He).

Group Normalization (Wu & He, 2018, Table 3) trains ResNet-50 on ImageNet at 32 down to 2
images per batch: BN's error climbs from 23.6 % to 34.7 %, GN's stays at 24.1 %. This demo
shows the same effect in seconds on the shipped digits as 1x8x8 images, with
:func:`dualnorm.models.digits_cnn`: four convolutions (16/32/64/64 channels) whose last one
sees the 2x2 map left after two poolings and outputs 1x1, so the batch norm there sees only
B values per channel. (In a two-convolution net on 8x8 digits BN averages over B x 64 pixels
and does not suffer even at B = 2.)

Every variant trains for the same number of epochs over the 1 500 training digits
(shuffled, cross-entropy, SGD with momentum 0.9), so batch 2 takes 16 times the steps of
batch 32, with the learning rate scaled linearly with the batch size as Wu & He do
(Goyal et al.'s rule): ``lr * B / 32``, ``lr`` (default 0.1) being batch 32's. ``accuracy`` (on the records that end an epoch) is the eval-mode accuracy
on the 297 held-out digits: batch norm then uses its running averages. The records also carry
``extra["train_mode_accuracy"]``: the same digits normalized, batch by batch of the training
size, with the batch's own statistics. For BN at B = 2 the network cannot learn at all: two
values per channel normalize to -1 and +1 whatever they are, so in training the last stage says
only which of the two images is larger, and train-mode accuracy stays as low as eval-mode's
(measured: 27 % and 43 % after 3 epochs on NumPy). GN normalizes each image over its own
channels and does not depend on the batch size.

Variants are ``b{B:02d}-{norm}`` for B in 2, 4, 8, 32 and norm in batchnorm, groupnorm, none
(GroupNorm with 8 groups). Every variant of one batch size starts from the same convolution
weights and sees the same batches. Records carry ``extra["scale_index"]`` (the batch size's
position, 0..3), ``extra["scale"]`` and ``extra["batch_size"]`` (B) and
``extra["normalization"]``: the fields init-sweep's grid reads (``extra["grid_label"]``, e.g.
"batch 2", names a cell). ``options["epochs"]`` (default
3) sets the length; ``steps`` caps the steps of every variant (for a quick look).
"""

from __future__ import annotations

from dualnorm.data import Dataset, load_digits
from dualnorm.errors import InputError
from dualnorm.experiments._images import accuracy, epoch_batches, steps_per_epoch
from dualnorm.experiments.base import Experiment, RunConfig, Setup
from dualnorm.losses import CrossEntropyLoss
from dualnorm.models import digits_cnn
from dualnorm.optim import SGD
from dualnorm.records import StepRecord
from dualnorm.training import Task

BATCH_SIZES = (2, 4, 8, 32)
NORMALIZATIONS = (("batchnorm", "batch"), ("groupnorm", "group"), ("none", None))
GROUPS = 8
EPOCHS = 3
MOMENTUM = 0.9
REFERENCE_BATCH = 32  # the batch size whose lr is the experiment's lr (linear scaling rule)
EVAL_CHUNK = 300  # eval mode: the whole held-out set (297) at once


def variant_name(batch_size: int, normalization: str) -> str:
    return f"b{batch_size:02d}-{normalization}"


def parse_variant(name: str) -> tuple[int, str]:
    size, norm = name.split("-", 1)
    return int(size[1:]), norm


class SmallBatch(Experiment):
    name = "small-batch"
    blas_threads = 1  # 8x8 images, batches of 2-32: products too small for a thread pool
    grid_title = "held-out accuracy per batch size: BN solid green, GN solid blue, none dotted red"
    title = "Small batches: batch norm vs group norm vs none (Wu & He)"
    summary = (
        "a 4-conv CNN on 8x8 digits at batch 2/4/8/32: BN collapses at batch 2 in eval mode, GN does not"
    )
    variants = tuple(variant_name(b, n) for b in BATCH_SIZES for n, _ in NORMALIZATIONS)
    default_steps = EPOCHS * steps_per_epoch(1500, BATCH_SIZES[0])  # the longest variant (batch 2)
    default_lr = 0.1  # at batch 32; batch B trains with lr * B / 32
    default_record_every = 50
    option_names = ("epochs",)

    _digits: Dataset | None = None

    def data(self) -> Dataset:
        if SmallBatch._digits is None:
            SmallBatch._digits = load_digits(images=True)
        return SmallBatch._digits

    def epochs(self, config: RunConfig) -> int:
        epochs = config.options.get("epochs", EPOCHS)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise InputError(f"small-batch: options['epochs'] must be a positive integer, got {epochs!r}")
        return epochs

    def check_options(self, config: RunConfig) -> None:
        super().check_options(config)
        self.epochs(config)

    def seed_keys(self, variant: str) -> tuple[int, ...]:
        return (BATCH_SIZES.index(parse_variant(variant)[0]),)  # one init and one order per batch size

    def build_task(self, variant: str, setup: Setup) -> Task:
        backend, config = setup.backend, setup.config
        batch_size, normalization = parse_variant(variant)
        norm = dict(NORMALIZATIONS)[normalization]
        data = self.data()
        spe = steps_per_epoch(len(data.x_train), batch_size, drop_last=True)
        steps = self.epochs(config) * spe
        if config.steps is not None:
            steps = min(steps, setup.steps)
        # record per-layer statistics ~ every `record_every` steps, and on every epoch's last step
        record_every = max(d for d in range(1, min(setup.record_every, spe) + 1) if spe % d == 0)
        model = digits_cnn(norm, groups=GROUPS)
        train_mode = norm == "batch"
        return Task(
            experiment=self.name,
            variant=variant,
            model=model,
            loss_fn=CrossEntropyLoss(),
            optimizer=SGD(model.parameters(), lr=setup.lr * batch_size / REFERENCE_BATCH, momentum=MOMENTUM),
            batch=epoch_batches(backend, data.x_train, data.y_train, batch_size, setup.rng, drop_last=True),
            steps=steps,
            record_every=record_every,
            steps_per_epoch=spe,
            accuracy=lambda: accuracy(backend, model, data.x_test, data.y_test, chunk=EVAL_CHUNK),
            static_extra={
                "scale_index": BATCH_SIZES.index(batch_size),
                "scale": batch_size,
                "batch_size": batch_size,
                "normalization": normalization,
                "lr": setup.lr * batch_size / REFERENCE_BATCH,
                "grid_label": f"batch {batch_size}",
                "grid_cells": len(BATCH_SIZES),
                "dataset": "digits-8x8",
            },
            context={
                "train_mode_accuracy": (
                    (
                        lambda: accuracy(
                            backend, model, data.x_test, data.y_test, chunk=batch_size, train_mode=True
                        )
                    )
                    if train_mode
                    else None
                )
            },
        )

    def on_record(self, record: StepRecord, task: Task) -> StepRecord:
        train_mode = task.context["train_mode_accuracy"]
        if record.accuracy is not None:
            record.extra["train_mode_accuracy"] = record.accuracy if train_mode is None else train_mode()
            task.model.train()
        return record
