"""Snapshot tests of paused run screens (fake experiments, fixed terminal size).

Update with: python -m pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

pytest.importorskip("textual")
pytest.importorskip("pytest_textual_snapshot")

from helpers import make_app, settle, wait_for

from tui.widgets import SweepGrid

SNAP_SIZE = (140, 44)


def _stepped(n: int, *, sweep: bool = False):
    async def run_before(pilot) -> None:
        screen = pilot.app.screen
        screen.runner.step(n)
        await settle(pilot, screen)
        if sweep:
            grid = screen.query_one(SweepGrid)
            await wait_for(pilot, lambda: grid.cells and all(c.is_mounted for c in grid.cells))
            await pilot.pause(0.05)
        if screen.runner.finished.is_set():  # its average rate is the machine's: pin it to 1 second
            screen.runner.started_at, screen.runner.finished_at = 0.0, 1.0
        screen.poll(force=True)
        await pilot.pause(0.1)

    return run_before


@pytest.mark.parametrize(
    ("name", "steps", "n"),
    [("dying-relu", 20, 30), ("sigmoid-depth", 20, 30), ("init-sweep", 12, 200), ("diverge", 20, 25)],
)
def test_paused_run_screen(snap_compare, name, steps, n):
    app = make_app(experiment=name, steps=steps, start_paused=True)
    assert snap_compare(app, terminal_size=SNAP_SIZE, run_before=_stepped(n, sweep=name == "init-sweep"))


def test_start_screen(snap_compare):
    assert snap_compare(make_app(), terminal_size=(100, 20))


def test_help_screen(snap_compare):
    app = make_app(experiment="dying-relu", start_paused=True)
    assert snap_compare(app, terminal_size=SNAP_SIZE, press=["question_mark"])
