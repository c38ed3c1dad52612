"""small-batch live in the terminal UI: its records fill init-sweep's grid and the layer table.

(simple-cnn's records are the same kind as every experiment's; the CLI tests cover it.)"""

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


def test_small_batch_runs_live_in_the_app():
    async def main():
        variants = ("b02-batchnorm", "b02-none")
        app = DualnormApp(experiment="small-batch", backend="numpy", steps=2, variants=variants)
        async with app.run_test(size=SIZE) as pilot:
            screen = app.screen
            assert isinstance(screen, RunScreen)
            await _wait(pilot, lambda: screen.runner.finished.is_set(), what="small-batch finished")
            screen.poll(force=True)
            await pilot.pause()
            assert screen.runner.error is None, screen.runner.error
            assert screen.query_one(LayerTable).row_count > 0
            assert screen.query_one(SweepGrid).display
            # the batch-2 cell holds both runs, keyed as init-sweep's are
            assert screen.state.sweep[0]["batchnorm"] == "b02-batchnorm"
            assert screen.state.sweep[0]["none"] == "b02-none"
            await pilot.press("q")

    asyncio.run(main())
