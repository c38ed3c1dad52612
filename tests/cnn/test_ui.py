"""small-batch and simple-cnn live in the terminal UI: records reach the sweep grid and the layer table."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("textual")

from tui.app import DualnormApp
from tui.screens import RunScreen
from tui.widgets import LayerTable, SweepGrid

SIZE = (140, 45)


async def _wait(pilot, cond, timeout=90.0, what="condition"):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


@pytest.mark.parametrize(
    ("name", "variants", "grid"),
    [("small-batch", ("b02-batchnorm", "b02-none"), True), ("simple-cnn", ("lrn",), False)],
)
def test_runs_live_in_the_app(name, variants, grid):
    async def main():
        app = DualnormApp(experiment=name, backend="numpy", steps=2, variants=variants)
        async with app.run_test(size=SIZE) as pilot:
            screen = app.screen
            assert isinstance(screen, RunScreen)
            await _wait(pilot, lambda: screen.runner.finished.is_set(), what=f"{name} finished")
            screen.poll(force=True)
            await pilot.pause()
            assert screen.runner.error is None, screen.runner.error
            assert screen.query_one(LayerTable).row_count > 0
            assert screen.query_one(SweepGrid).display is grid
            if grid:  # the batch-2 cell holds both runs, keyed as init-sweep's are
                assert screen.state.sweep[0]["batchnorm"] == "b02-batchnorm"
                assert screen.state.sweep[0]["none"] == "b02-none"
            await pilot.press("q")

    asyncio.run(main())
