"""``dying-relu``: batch norm rescues a ReLU whose every input is negative (the documents' demo).

Exactly the documents' setup: ``Linear(1, 1, bias=False)`` with its weight set to -10,
then ReLU (variant ``plain``) or BatchNorm1d(1) then ReLU (variant ``batchnorm``).
Data ``X = linspace(1, 1000, 10000)`` as a column, target ``y = X``; MSE loss, plain SGD
with lr 0.001, full batch, 10 000 epochs (one step per epoch).

Without BN every pre-activation is negative, ReLU outputs 0, every gradient is 0: the
loss stays at mean(y^2) ~ 3.34e5 forever. With BN the normalized pre-activations are
half positive, gradients flow into gamma and beta, and the loss falls to ~0.

Every record's ``extra["probe"]`` traces the probe inputs [1, 2, 3, 4, 5] through the
layers *in eval mode* (running statistics): ``{"input", "after_linear", "after_bn"
(None without BN), "after_relu"}``. The last record's probe is the trained model's map.
"""

from __future__ import annotations

import numpy as np

from dualnorm import nn
from dualnorm.backends import Backend
from dualnorm.experiments._common import BaseExperiment, host_list, to_backend
from dualnorm.experiments.base import Setup
from dualnorm.losses import MSELoss
from dualnorm.optim import SGD
from dualnorm.training import Task

PROBE = (1.0, 2.0, 3.0, 4.0, 5.0)
N_SAMPLES = 10_000
INITIAL_WEIGHT = -10.0


def build_model(variant: str) -> nn.Sequential:
    """The documents' model on the active backend: Linear(1,1,bias=False) w=-10 [-> BN] -> ReLU."""
    linear = nn.Linear(1, 1, bias=False)
    linear.weight.data = linear.backend.asarray(np.array([[INITIAL_WEIGHT]]), linear.dtype)
    if variant == "batchnorm":
        return nn.Sequential(linear, nn.BatchNorm1d(1), nn.ReLU())
    return nn.Sequential(linear, nn.ReLU())


def dataset() -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(1.0, 1000.0, N_SAMPLES, dtype=np.float32).reshape(-1, 1)
    return x, x.copy()


def trace_probe(backend: Backend, model: nn.Sequential, probe: tuple[float, ...] = PROBE) -> dict:
    """The probe inputs after each layer, in eval mode (the model is left in eval mode)."""
    model.eval()
    h = to_backend(backend, np.asarray(probe, dtype=np.float32).reshape(-1, 1))
    out: dict = {
        "input": [float(v) for v in probe],
        "after_linear": None,
        "after_bn": None,
        "after_relu": None,
    }
    for layer in model:
        h = layer(h)
        key = {"Linear": "after_linear", "BatchNorm1d": "after_bn", "ReLU": "after_relu"}[
            type(layer).__name__
        ]
        out[key] = host_list(backend, h)
    return out


class DyingReLU(BaseExperiment):
    name = "dying-relu"
    title = "Dying ReLU, rescued by batch norm"
    summary = "Linear(1,1) w=-10 -> ReLU never learns (loss stuck at 3.34e5); with BatchNorm1d it fits y=x"
    variants = ("plain", "batchnorm")
    default_steps = 10_000
    default_lr = 1e-3
    default_record_every = 50
    blas_threads = 1  # (100, 100)-sized products: no thread pool

    def build_task(self, variant: str, setup: Setup) -> Task:
        backend = setup.backend
        x_host, y_host = dataset()
        model = build_model(variant)
        x, y = to_backend(backend, x_host), to_backend(backend, y_host)
        return Task(
            experiment=self.name,
            variant=variant,
            model=model,
            loss_fn=MSELoss(),
            optimizer=SGD(model.parameters(), lr=setup.lr),
            batch=lambda step: (x, y),
            steps=setup.steps,
            record_every=setup.record_every,
            extra=lambda step: {"probe": trace_probe(backend, model)},
            static_extra={"normalization": "batchnorm" if variant == "batchnorm" else "none"},
        )
