"""What screens ask of the app. Screens post these and the app handles them (``on_<name>``), so no
screen imports the app: the import graph of tui/ has no cycle (as in Textual's demo app)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.message import Message


class OpenExperiment(Message):
    """Start the experiment called ``name`` in a new run screen."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class OpenRuns(Message):
    """Show these run directories / JSON Lines files, overlaid, followed while they are written."""

    def __init__(self, paths: Sequence[Any]) -> None:
        super().__init__()
        self.paths = list(paths)


class RestartRun(Message):
    """Replace ``screen`` by a fresh run of its experiment with ``config``."""

    def __init__(self, screen: Any, config: Any) -> None:
        super().__init__()
        self.screen = screen
        self.config = config


class BackToStart(Message):
    """Leave the run screen for the experiment list."""


class SetBackend(Message):
    """The backend new runs use."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.backend = backend


class RunnerStarted(Message):
    """A screen started a runner: the app stops it on quit."""

    def __init__(self, runner: Any) -> None:
        super().__init__()
        self.runner = runner


def next_backend(backends: Sequence[str], current: str) -> str:
    """The backend after ``current`` in ``backends``, wrapping around."""
    if len(backends) <= 1:
        return current
    i = list(backends).index(current) if current in backends else -1
    return backends[(i + 1) % len(backends)]
