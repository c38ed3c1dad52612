"""A user experiment, as a person would write it from the README (loaded by file and entry point)."""

from dualnorm import nn
from dualnorm.experiments import Experiment, Setup
from dualnorm.losses import MSELoss
from dualnorm.optim import SGD
from dualnorm.training import Task


class Wider(Experiment):
    name, title = "wider", "Does width help?"
    summary = "a 1-hidden-layer net at two widths"
    variants = ("w2", "w16")
    default_steps, default_lr, default_record_every = 20, 0.05, 5

    def build_task(self, variant: str, setup: Setup) -> Task:
        width = int(variant[1:])
        model = nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 1))
        x = setup.backend.asarray(setup.rng.normal(size=(32, 4)).astype("float32"))
        y = setup.backend.asarray(setup.rng.normal(size=(32, 1)).astype("float32"))
        return Task(
            self.name,
            variant,
            model,
            MSELoss(),
            SGD(model.parameters(), lr=setup.lr),
            batch=lambda step: (x, y),
            steps=setup.steps,
            record_every=setup.record_every,
        )


class Broken(Experiment):
    name, title, summary, variants = "broken", "raises", "raises while training", ("only",)

    def build_task(self, variant: str, setup: Setup) -> Task:
        raise RuntimeError("the user's experiment raised this on purpose")
