"""The contract between experiments and whatever watches them (CLI, TUI, tests).

An experiment is a named, seeded training setup with one or more *variants*
(e.g. "plain" and "batchnorm"). ``Experiment.run`` is a generator: training
advances only while the caller pulls records, so a consumer pauses training by
not pulling and single-steps by pulling one record. Every backend array stays
inside the generator (and so on the thread that iterates it); records carry
plain Python values only.

Writing your own (``dualnorm run my_file.py:Wider``, ``dualnorm tui -x my_file.py:Wider``)::

    from dualnorm import nn
    from dualnorm.experiments import Experiment, Setup
    from dualnorm.losses import MSELoss
    from dualnorm.optim import SGD
    from dualnorm.training import Task

    class Wider(Experiment):
        name, title = "wider", "Does width help?"
        summary = "a 1-hidden-layer net at two widths"
        variants = ("w8", "w64")
        default_steps, default_lr, default_record_every = 200, 0.05, 10

        def build_task(self, variant: str, setup: Setup) -> Task:
            width = int(variant[1:])
            model = nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 1))
            x = setup.backend.asarray(setup.rng.normal(size=(64, 4)).astype("float32"))
            y = setup.backend.asarray(setup.rng.normal(size=(64, 1)).astype("float32"))
            return Task(self.name, variant, model, MSELoss(), SGD(model.parameters(), lr=setup.lr),
                        batch=lambda step: (x, y), steps=setup.steps, record_every=setup.record_every)

The base class does the rest, for every selected variant in order: check for stop, seed
(``seed_keys``), enter the backend, call ``build_task`` and train it
(:func:`dualnorm.training.train`), passing each record through ``on_record``. Override
``run_variant`` for a variant that is not a training loop (see sigmoid-depth's forward-only
views), or ``run`` to take over completely (it must still yield ``StepRecord`` objects and
honour ``stop``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from dualnorm.errors import InputError
from dualnorm.records import StepRecord

if TYPE_CHECKING:
    from dualnorm.backends import Backend
    from dualnorm.training import Task


@dataclass(frozen=True)
class RunConfig:
    """What a caller may change about a run. ``None`` means the experiment's default."""

    backend: str | None = None  # "numpy" | "mlx" | None for the active backend
    steps: int | None = None  # optimizer steps per variant
    seed: int = 0
    lr: float | None = None
    record_every: int | None = None  # record per-layer statistics every k steps
    variants: tuple[str, ...] | None = None  # subset of Experiment.variants to run
    options: dict[str, Any] = field(default_factory=dict)  # experiment-specific, e.g. mnist_path

    def with_changes(self, **changes: Any) -> RunConfig:
        return replace(self, **changes)


@dataclass(frozen=True)
class Setup:
    """What ``build_task`` gets for one variant: the resolved config, the backend and a seeded rng."""

    config: RunConfig
    backend: Backend
    rng: np.random.Generator  # data randomness, seeded from (config.seed, *seed_keys(variant))
    steps: int
    lr: float
    record_every: int


class Experiment:
    """Base class of every experiment: subclasses set the class attributes and ``build_task``."""

    name: str  # CLI name, e.g. "dying-relu"
    title: str  # short human title
    summary: str  # one line for the start screen and `dualnorm list`
    variants: tuple[str, ...]  # names of the variants, in display order
    default_steps: int = 100
    default_lr: float = 0.01
    default_record_every: int = 10
    #: option names this experiment understands (``RunConfig.options`` keys)
    option_names: tuple[str, ...] = ()
    #: does this experiment use a dataset (``options["dataset"]``: "digits" or an MNIST path)?
    uses_dataset: bool = False
    #: BLAS threads while ``dualnorm run`` and the UI train it: 1 where the matrices are small
    #: (a thread pool then costs more than it gives), None to leave the BLAS library's default
    blas_threads: int | None = None
    #: the title of the accuracy grid (what it shows, how each line is drawn), for an experiment
    #: whose records fill one (``extra["scale_index"]``)
    grid_title: str | None = None

    # -- the hooks ---------------------------------------------------------------------------------

    def build_task(self, variant: str, setup: Setup) -> Task:
        """The model, loss, optimizer and data of one variant (built on the active backend)."""
        raise NotImplementedError(f"{type(self).__name__} must define build_task(variant, setup)")

    def seed_keys(self, variant: str) -> tuple[int, ...]:
        """Extra seed keys for a variant (variants sharing keys see the same init and data)."""
        return ()

    def on_record(self, record: StepRecord, task: Task) -> StepRecord:
        """Add to a record before it is yielded (e.g. a test-set accuracy)."""
        return record

    # -- the template ------------------------------------------------------------------------------

    def run(self, config: RunConfig, stop: threading.Event | None = None) -> Iterator[StepRecord]:
        """Train every selected variant, yielding records as they are made.

        Variants run one after another (init-sweep: one per weight scale and
        normalization). The last record of each variant has status "done" or
        "diverged". If ``stop`` is set, the generator returns at the next step.
        Everything in ``config`` is checked before the first record.
        """
        self.check_options(config)
        backend = self.backend(config)
        variants = self.selected_variants(config)
        self.steps(config), self.lr(config), self.record_every(config)
        return self._run(config, backend, variants, stop)

    def _run(
        self, config: RunConfig, backend: Backend, variants: tuple[str, ...], stop: threading.Event | None
    ) -> Iterator[StepRecord]:
        # Compiled kernels load in the background while the first record is made; every step
        # after it takes them (one fixed switch point: the same numbers in every run).
        backend.start_warm_up()
        warm = False
        for variant in variants:
            if stop is not None and stop.is_set():
                return
            for record in self.run_variant(variant, config, backend, stop):
                yield record
                if not warm:
                    backend.warm_up()
                    warm = True

    def run_variant(
        self, variant: str, config: RunConfig, backend: Backend, stop: threading.Event | None
    ) -> Iterator[StepRecord]:
        from dualnorm._rng import seed_everything
        from dualnorm.backends import use_backend
        from dualnorm.training import train

        rng = seed_everything(config.seed, *self.seed_keys(variant))
        setup = Setup(config, backend, rng, self.steps(config), self.lr(config), self.record_every(config))
        with use_backend(backend.name):
            task = self.build_task(variant, setup)
        for record in train(task, backend, stop):
            yield self.on_record(record, task)

    # -- config resolution -------------------------------------------------------------------------

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
        from dualnorm.backends import get_backend

        return get_backend(config.backend)
