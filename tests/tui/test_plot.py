"""The loss plot draws every curve over the whole run, at any value, on linear and log axes."""

from __future__ import annotations

import pytest

pytest.importorskip("textual")

from helpers import sync
from textual.app import App

from dualnorm.records import StepRecord
from tui.state import RunState
from tui.widgets import LossPlot, SweepGrid

BRAILLE = range(0x2801, 0x2900)  # U+2800 is the blank braille cell


def _settling_run() -> RunState:
    """batchnorm falls to its minimum 1.16e-4 at about step 4,000 and stays there to step 10,000."""
    state = RunState(("plain", "batchnorm"))
    records = []
    for variant in ("plain", "batchnorm"):
        for step in range(50, 10_001, 50):
            loss = 3.34e5 if variant == "plain" else max(1.16e-4, 3.34e5 * 0.85 ** (step / 50))
            records.append(StepRecord("dying-relu", variant, step, 0, loss, "numpy"))
    state.apply(records)
    return state


class _PlotApp(App[None]):
    def compose(self):
        yield LossPlot(id="loss")


def _dot_columns(plot: LossPlot, rows: range) -> set[int]:
    canvas = plot.query_one("#plot")
    r = plot._scale_rectangle
    return {x for x in range(r.x, r.right) for y in rows if ord(canvas.get_pixel(x, y)[0][0]) in BRAILLE}


@pytest.mark.parametrize("log_y", [False, True])
@sync
async def test_a_curve_at_its_minimum_is_drawn_to_the_end_of_the_run(log_y):
    app = _PlotApp()
    async with app.run_test(size=(80, 20)) as pilot:
        plot = app.query_one(LossPlot)
        plot.redraw(_settling_run(), log_y=log_y, smoothing=None)
        await pilot.pause()
        await pilot.pause()
        r = plot._scale_rectangle
        assert plot.curve_rows >= 8
        # the bottom row holds the settled batchnorm curve in every column from ~step 7,000 on,
        # the right-most column included (the data's maximum x maps just off the canvas unpadded)
        bottom = _dot_columns(plot, range(r.bottom - 1, r.bottom))
        assert set(range(r.x + 3 * r.width // 4, r.right)) <= bottom
        # and the plain curve (its maximum) runs along the top row to the end
        top = _dot_columns(plot, range(r.y, r.y + 1))
        assert r.right - 1 in top


class _GridApp(App[None]):
    def compose(self):
        yield SweepGrid(id="sweep")


@sync
async def test_the_sweep_grid_takes_any_number_of_settings_and_normalizations():
    """A sweep like init-sweep's, with 20 settings and a third normalization (e.g. a CNN demo's)."""
    state = RunState()
    records = []
    for index in range(20):
        for norm in ("batchnorm", "groupnorm", "none"):
            for epoch in (1, 2):
                records.append(
                    StepRecord(
                        "sweep", f"s{index:02d}-{norm}", epoch * 10, epoch, 1.0, "numpy",
                        accuracy=0.5 * epoch if norm != "none" else 0.1,
                        extra={"scale": 10.0**-index, "scale_index": index, "normalization": norm},
                    )
                )  # fmt: skip
    state.apply(records)
    app = _GridApp()
    async with app.run_test(size=(120, 50)) as pilot:
        grid = app.query_one(SweepGrid)
        grid.redraw(state)
        await pilot.pause()
        grid.redraw(state)  # the cells mounted since: drawn now
        await pilot.pause()
        assert len(grid.cells) == 20 and grid.styles.grid_size_columns == 5
        cell = grid.cells[19]
        assert cell.border_title == "1e-19 BN 1.00 / GN 1.00 / plain 0.10"
        assert cell.border_subtitle == "BN 1.00 / GN 1.00 / plain 0.10"
        kinds = sorted(type(d).__name__ for d in cell._datasets)
        assert kinds == ["LinePlot", "LinePlot", "ScatterPlot"]  # the baseline dotted
        assert all(c._scale_rectangle.height >= 3 for c in grid.cells)  # rows of curve


@sync
async def test_a_grid_that_names_its_cells_and_their_count_gets_just_those():
    """small-batch's records: four batch sizes, each cell named by ``grid_label``."""
    state = RunState()
    records = [
        StepRecord(
            "small-batch", f"b{b:02d}-{norm}", 10, 1, 1.0, "numpy", accuracy=0.9,
            extra={"scale": b, "scale_index": i, "normalization": norm, "grid_label": f"batch {b}", "grid_cells": 4},
        )
        for i, b in enumerate((2, 4, 8, 32))
        for norm in ("batchnorm", "groupnorm", "none")
    ]  # fmt: skip
    state.apply(records)
    app = _GridApp()
    async with app.run_test(size=(100, 30)) as pilot:
        grid = app.query_one(SweepGrid)
        grid.redraw(state)
        await pilot.pause()
        grid.redraw(state)
        await pilot.pause()
        assert len(grid.cells) == 4 and grid.styles.grid_size_columns == 2
        assert grid.cells[0].border_title == "batch 2 BN 0.90 / GN 0.90 / plain 0.90"
        assert grid.cells[3].border_title.startswith("batch 32 ")
