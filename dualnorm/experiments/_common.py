"""Helpers shared by the experiments: config resolution, seeding, data on the backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from dualnorm._rng import seed_everything  # noqa: F401 (experiments import it from here)
from dualnorm.backends import Backend
from dualnorm.data import Dataset, load_dataset
from dualnorm.experiments.base import Experiment, RunConfig

BaseExperiment = Experiment  # the config handling and the run template now live in the base class


_DATASETS: dict[str, Dataset] = {}


def dataset_from(config: RunConfig) -> Dataset:
    """``options["dataset"]``: "digits" (default, shipped) or a path to MNIST files (cached per path)."""
    source = str(config.options.get("dataset") or "digits")
    if source not in _DATASETS:
        _DATASETS[source] = load_dataset(source)
    return _DATASETS[source]


def to_backend(backend: Backend, array: np.ndarray, dtype: Any = None) -> Any:
    return backend.asarray(array, backend.float32 if dtype is None else dtype)


def host_list(backend: Backend, array: Any) -> list[float]:
    return [float(v) for v in np.asarray(backend.to_numpy(array), dtype=np.float64).ravel()]


def accuracy_fn(backend: Backend, model: Any, x: Any, labels: np.ndarray) -> Any:
    """A closure: the model's accuracy on (x, labels) in eval mode (running statistics)."""

    def accuracy() -> float:
        model.eval()
        with np.errstate(all="ignore"):  # a diverging model's logits overflow; argmax still answers
            logits = np.asarray(backend.to_numpy(model(x)))
        model.train()
        return float(np.mean(np.argmax(logits, axis=1) == labels))

    return accuracy


def sampler(
    backend: Backend, x_host: np.ndarray, y_host: np.ndarray, batch_size: int, rng: np.random.Generator
):
    """``batch(step)`` drawing ``batch_size`` rows *with replacement* (as the documents' np.random.choice).

    The whole set lives on the backend once; each step gathers its rows there.
    """
    x_all = to_backend(backend, x_host)
    y_all = backend.asarray(y_host, backend.int64)
    n = len(x_host)

    def batch(step: int) -> tuple[Any, Any]:
        idx = backend.indices(rng.integers(0, n, batch_size))
        return x_all[idx], y_all[idx]

    return batch
