"""``init-sweep``: the classic batch-norm experiment -- 16 initial weight scales, BN vs plain.

The documents' setup ("Deep Learning from Scratch", ch. 6): an MLP with five hidden
layers of 100 ReLU units (Affine -> BatchNorm -> ReLU per hidden layer, then Affine ->
softmax cross-entropy), every Affine's weight ~ N(0, scale^2) and bias 0, plain SGD with
lr 0.01, mini-batches of 100 drawn with replacement from 1 000 training images, 20 epochs
of 10 iterations, for ``scale`` in ``logspace(0, -4, 16)``, once with BN and once without.

Variants are named ``s{index:02d}-batchnorm`` / ``s{index:02d}-plain`` (32 in all, scale
0 first). Both variants of a scale see the same initial Affine weights and the same
mini-batches. Every record has ``extra["scale"]``, ``extra["scale_index"]`` and
``extra["normalization"]`` ("batchnorm" or "none"); ``accuracy`` -- on the records that end
an epoch (one per epoch at the default ``record_every`` of 10) -- is the accuracy on the
1 000 training images. ``options["dataset"]`` is "digits" (default, shipped) or a path to
MNIST files. BN layers use the documents' eps of 1e-6 (``10e-7`` in their code;
``options["bn_eps"]`` changes it): at the smallest scales the pre-activation variance
falls below PyTorch's default 1e-5, and eps then dominates the normalization.

How the accuracy is measured: ``options["accuracy_mode"]`` is "train" (default) or "eval".
"eval" runs the BN nets in eval mode with PyTorch-convention running statistics (which
start at mean 0, variance 1 and move with momentum 0.1, so at tiny weight scales they need
~150 steps to forget the initial variance of 1); "train" normalizes with the statistics of
the evaluated batch itself (the 1 000 images) without touching the running statistics, which
measures what the network has learned rather than how far its running averages have come.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dualnorm.backends import Backend
from dualnorm.errors import InputError
from dualnorm.experiments._common import BaseExperiment, dataset_from, sampler, to_backend
from dualnorm.experiments.base import RunConfig, Setup
from dualnorm.losses import CrossEntropyLoss
from dualnorm.models import mlp
from dualnorm.optim import SGD
from dualnorm.training import Task

SCALES = tuple(float(s) for s in np.logspace(0, -4, 16))
HIDDEN = (100, 100, 100, 100, 100)
TRAIN_SIZE = 1000
BATCH_SIZE = 100
ITERS_PER_EPOCH = TRAIN_SIZE // BATCH_SIZE
NORMALIZATIONS = (("batchnorm", "batch"), ("plain", "none"))
BN_EPS = 1e-6  # the documents' BatchNormalization uses 10e-7 (PyTorch's default is 1e-5)


def variant_name(index: int, normalization: str) -> str:
    return f"s{index:02d}-{normalization}"


def parse_variant(name: str) -> tuple[int, str]:
    index, norm = name.split("-", 1)
    return int(index[1:]), norm


def batch_stat_accuracy(backend: Backend, model: Any, x: Any, labels: np.ndarray) -> Any:
    """Accuracy with every BN layer normalizing by the evaluated batch's own statistics.

    The model stays in training mode for the forward pass; the running statistics are
    saved and restored, so the evaluation leaves no trace in the model.
    """

    def accuracy() -> float:
        saved = [(m, dict(m._buffers)) for _, m in model.named_modules() if m._buffers]
        logits = np.asarray(backend.to_numpy(model(x)))
        for module, buffers in saved:
            module._buffers.update(buffers)
        return float(np.mean(np.argmax(logits, axis=1) == labels))

    return accuracy


def eval_accuracy(backend: Backend, model: Any, x: Any, labels: np.ndarray) -> Any:
    def accuracy() -> float:
        model.eval()
        logits = np.asarray(backend.to_numpy(model(x)))
        model.train()
        return float(np.mean(np.argmax(logits, axis=1) == labels))

    return accuracy


class InitSweep(BaseExperiment):
    name = "init-sweep"
    title = "Weight-init sweep: 16 scales, batch norm vs plain"
    summary = "5x100 ReLU MLP at 16 init scales (1 .. 1e-4): with BN it learns at almost every scale"
    variants = tuple(variant_name(i, n) for i in range(len(SCALES)) for n, _ in NORMALIZATIONS)
    default_steps = 20 * ITERS_PER_EPOCH
    default_lr = 0.01
    default_record_every = ITERS_PER_EPOCH
    blas_threads = 1  # (100, 100)-sized products: no thread pool
    grid_title = "training accuracy per weight scale: BN solid green, plain dotted red"
    uses_dataset = True
    option_names = ("accuracy_mode", "bn_eps")

    def check_options(self, config: RunConfig) -> None:
        super().check_options(config)
        mode = config.options.get("accuracy_mode", "train")
        if mode not in ("train", "eval"):
            raise InputError(f"init-sweep: accuracy_mode must be 'train' or 'eval', got {mode!r}")

    def seed_keys(self, variant: str) -> tuple[int, ...]:
        return (parse_variant(variant)[0],)  # both variants of a scale share init and batches

    def build_task(self, variant: str, setup: Setup) -> Task:
        config, backend = setup.config, setup.backend
        data = dataset_from(config)
        x_host, y_host = data.x_train[:TRAIN_SIZE], data.y_train[:TRAIN_SIZE]
        make_accuracy = (
            eval_accuracy if config.options.get("accuracy_mode", "train") == "eval" else batch_stat_accuracy
        )
        index, normalization = parse_variant(variant)
        scale = SCALES[index]
        model = mlp(
            data.input_dim,
            HIDDEN,
            data.num_classes,
            activation="relu",
            norm="batch" if normalization == "batchnorm" else "none",
            init="normal",
            init_std=scale,
            norm_eps=float(config.options.get("bn_eps", BN_EPS)),
        )
        return Task(
            experiment=self.name,
            variant=variant,
            model=model,
            loss_fn=CrossEntropyLoss(),
            optimizer=SGD(model.parameters(), lr=setup.lr),
            batch=sampler(backend, x_host, y_host, BATCH_SIZE, setup.rng),
            steps=setup.steps,
            record_every=setup.record_every,
            steps_per_epoch=ITERS_PER_EPOCH,
            accuracy=make_accuracy(backend, model, to_backend(backend, x_host), y_host),
            static_extra={
                "scale": scale,
                "scale_index": index,
                "normalization": "batchnorm" if normalization == "batchnorm" else "none",
                "dataset": data.name,
            },
        )
