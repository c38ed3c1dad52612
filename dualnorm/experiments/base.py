"""The contract between experiments and whatever watches them (CLI, TUI, tests).

An experiment is a named, seeded training setup with one or more *variants*
(e.g. "plain" and "batchnorm"). ``Experiment.run`` is a generator: training
advances only while the caller pulls records, so a consumer pauses training by
not pulling and single-steps by pulling one record. Every backend array stays
inside the generator (and so on the thread that iterates it); records carry
plain Python values only.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from dualnorm.records import StepRecord


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


class Experiment(abc.ABC):
    """Base class of every experiment. Subclasses set the class attributes and ``run``."""

    name: str  # CLI name, e.g. "dying-relu"
    title: str  # short human title
    summary: str  # one line for the start screen and `dualnorm list`
    variants: tuple[str, ...]  # names of the variants, in display order
    default_steps: int
    default_lr: float
    default_record_every: int

    @abc.abstractmethod
    def run(self, config: RunConfig, stop: threading.Event | None = None) -> Iterator[StepRecord]:
        """Train every selected variant, yielding records as they are made.

        Variants run one after another (init-sweep: one per weight scale and
        normalization). The last record of each variant has status "done" or
        "diverged". If ``stop`` is set, the generator returns at the next step.
        """
