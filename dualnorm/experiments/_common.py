"""Helpers shared by the experiments: config resolution, seeding, data on the backend."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from dualnorm._rng import manual_seed
from dualnorm.backends import Backend, get_backend
from dualnorm.data import Dataset, load_dataset
from dualnorm.errors import InputError
from dualnorm.experiments.base import Experiment, RunConfig
from dualnorm.records import StepRecord


class BaseExperiment(Experiment):
    """Config handling common to every experiment; subclasses implement ``_run``."""

    #: option names this experiment understands (``RunConfig.options`` keys)
    option_names: tuple[str, ...] = ()
    #: does this experiment use a dataset (``options["dataset"]``: "digits" or an MNIST path)?
    uses_dataset: bool = False

    def steps(self, config: RunConfig) -> int:
        steps = self.default_steps if config.steps is None else int(config.steps)
        if steps < 1:
            raise InputError(f"{self.name}: steps must be >= 1, got {config.steps!r}")
        return steps

    def lr(self, config: RunConfig) -> float:
        lr = self.default_lr if config.lr is None else float(config.lr)
        if not lr > 0:
            raise InputError(f"{self.name}: lr must be > 0, got {config.lr!r}")
        return lr

    def record_every(self, config: RunConfig) -> int:
        k = self.default_record_every if config.record_every is None else int(config.record_every)
        if k < 1:
            raise InputError(f"{self.name}: record_every must be >= 1, got {config.record_every!r}")
        return k

    def selected_variants(self, config: RunConfig) -> tuple[str, ...]:
        if config.variants is None:
            return self.variants
        unknown = [v for v in config.variants if v not in self.variants]
        if unknown or not config.variants:
            raise InputError(
                f"{self.name}: unknown variant(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                f"choose from: {', '.join(self.variants)}"
            )
        return tuple(v for v in self.variants if v in config.variants)

    def check_options(self, config: RunConfig) -> None:
        allowed = set(self.option_names) | ({"dataset"} if self.uses_dataset else set())
        unknown = sorted(set(config.options) - allowed)
        if unknown:
            raise InputError(
                f"{self.name}: unknown option(s) {unknown}; valid options: {sorted(allowed) or '(none)'}"
            )

    def backend(self, config: RunConfig) -> Backend:
        return get_backend(config.backend)

    def run(self, config: RunConfig, stop: threading.Event | None = None) -> Iterator[StepRecord]:
        # Validate everything before the first record, so bad input fails fast.
        self.check_options(config)
        backend = self.backend(config)
        variants = self.selected_variants(config)
        self.steps(config), self.lr(config), self.record_every(config)
        return self._run(config, backend, variants, stop)

    def _run(
        self, config: RunConfig, backend: Backend, variants: tuple[str, ...], stop: threading.Event | None
    ) -> Iterator[StepRecord]:
        raise NotImplementedError


def seed_everything(*keys: int) -> np.random.Generator:
    """Seed dualnorm's init generator from ``keys`` and return a data generator from the same keys."""
    seq = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys])
    init_seed, data_seed = seq.generate_state(2)
    manual_seed(int(init_seed))
    return np.random.default_rng(int(data_seed))


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
