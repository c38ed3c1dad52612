"""Named experiments from the source documents (see ``base.py`` for the contract).

``EXPERIMENTS`` maps a CLI name to an :class:`Experiment` instance, in display order.
"""

from __future__ import annotations

from dualnorm.experiments.base import Experiment, RunConfig, Setup
from dualnorm.experiments.dying_relu import DyingReLU
from dualnorm.experiments.init_sweep import InitSweep
from dualnorm.experiments.norm_zoo import NormZoo
from dualnorm.experiments.sigmoid_depth import SigmoidDepth
from dualnorm.experiments.simple_cnn import SimpleCNNExperiment
from dualnorm.experiments.small_batch import SmallBatch

EXPERIMENTS: dict[str, Experiment] = {
    exp.name: exp
    for exp in (DyingReLU(), SigmoidDepth(), InitSweep(), NormZoo(), SmallBatch(), SimpleCNNExperiment())
}
DEFAULT_EXPERIMENT = "dying-relu"


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; a ValueError listing the valid names otherwise."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ValueError(
            f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS) or '(none registered)'}"
        ) from None


__all__ = ["DEFAULT_EXPERIMENT", "EXPERIMENTS", "Experiment", "RunConfig", "Setup", "get_experiment"]
