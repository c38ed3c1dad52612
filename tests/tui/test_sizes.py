"""Every screen at 80x24, 100x30, 140x45 and 200x60: the loss plot keeps at least 8 rows of curve,
the footer shows q and ?, the panels take turns and their keys work (issue 20)."""

from __future__ import annotations

import pytest

pytest.importorskip("textual")

from fakes import FakeCompareJob
from helpers import make_app, settle, sync, wait_for
from textual.widgets._footer import FooterKey

from tui.compare import CompareScreen
from tui.screens import TALL_HEIGHT, RunScreen, StartScreen, ViewScreen
from tui.widgets import LayerTable, LossPlot, SweepGrid

SIZES = [(80, 24), (100, 30), (140, 45), (200, 60)]


def footer_keys_shown(app) -> set[str]:
    """The keys whose footer entry lies wholly inside the terminal."""
    width = app.size.width
    return {
        fk.key
        for fk in app.screen.query(FooterKey)
        if fk.display and fk.region.width and fk.region.right <= width
    }


async def assert_footer(pilot) -> None:
    """q and ? are in the footer (which rebuilds itself a refresh after the focus moves)."""
    await wait_for(pilot, lambda: {"q", "question_mark"} <= footer_keys_shown(pilot.app), what="q and ?")


async def assert_plot_rows(pilot, screen: RunScreen) -> None:
    """The plot is shown (panel 1 on a short terminal) with at least 8 rows of curve."""
    plot = screen.query_one(LossPlot)
    if not plot.display:
        await pilot.press("1")
    await pilot.pause()
    assert plot.display and plot.region.height > 0
    assert plot.curve_rows >= LossPlot.MIN_CURVE_ROWS, (screen.size, plot.curve_rows)


async def assert_panels_take_turns(pilot, screen: RunScreen) -> None:
    """Each panel key shows its panel (alone below the plot, or instead of it when short)."""
    for key, pid in screen.panel_keys():
        await pilot.press(key)
        await pilot.pause()
        assert screen.view == pid
        shown = [w.id for w in screen.panel_widgets().values() if w.display]
        assert shown == ([] if pid == "loss" else [pid])
        plot = screen.query_one(LossPlot)
        assert plot.display == (pid == "loss" or not screen.alone(pid))
        if pid != "loss":
            assert screen.panel_widgets()[pid].region.height >= 5
        await assert_footer(pilot)


@sync
async def test_start_screen():
    app = make_app()
    async with app.run_test(size=SIZES[0]) as pilot:
        assert isinstance(app.screen, StartScreen)
        for size in SIZES:
            await pilot.resize_terminal(*size)
            await pilot.pause()
            await assert_footer(pilot)
            options = app.screen.query_one("#experiments")
            assert options.region.height >= 4 + 2  # every demo on its own line, inside the border
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="run screen")
        assert app.screen.experiment.name == "sigmoid-depth"
        await pilot.press("q")


@pytest.mark.parametrize("name", ["dying-relu", "sigmoid-depth", "init-sweep"])
@sync
async def test_run_screen(name):
    app = make_app(experiment=name, steps=24, start_paused=True)
    async with app.run_test(size=SIZES[0]) as pilot:
        screen = app.screen
        screen.runner.step(200)
        await settle(pilot, screen)
        for size in SIZES:  # one run, resized: each size class from the same records
            await pilot.resize_terminal(*size)
            await pilot.pause()
            screen.chosen_panel = None  # the default view of this size
            screen.apply_layout()
            await pilot.pause()
            assert screen.compact == (size[1] < TALL_HEIGHT)
            await assert_footer(pilot)
            expected = {"loss", "layers"} | {"sigmoid-depth": {"hist"}, "dying-relu": {"probe"}}.get(
                name, set()
            )
            if name == "init-sweep":
                expected.add("sweep")
                assert screen.view == ("loss" if screen.compact else "sweep")  # the grid first where it fits
            assert expected <= {pid for _, pid in screen.panel_keys()}
            await assert_plot_rows(pilot, screen)
            if size in ((80, 24), (140, 45)):  # one short and one tall size: the keys are the same
                await assert_panels_take_turns(pilot, screen)
            if name == "init-sweep":
                await pilot.press("5")
                cells = screen.query_one(SweepGrid).cells
                await wait_for(pilot, lambda cells=cells: all(c.is_mounted for c in cells), what="grid cells")
                await pilot.pause()
                # 4x4 cells, each with rows of curve: one at 80x24 (the loss plot is one key away)
                rows = 1 if size == (80, 24) else 3
                assert all(c._scale_rectangle.height >= rows and c.region.width >= 18 for c in cells), size
        await pilot.press("q")


@sync
async def test_viewer_and_compare_screens(tmp_path):
    job = FakeCompareJob(tmp_path)
    app = make_app(compare=(job, 1e-2))
    async with app.run_test(size=SIZES[0]) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare screen")
        screen = app.screen
        await wait_for(pilot, screen.runner.finished.is_set, what="both runs read")
        screen.poll(force=True)
        for size in SIZES:
            await pilot.resize_terminal(*size)
            await pilot.pause()
            screen.chosen_panel = None
            screen.apply_layout()
            await pilot.pause()
            await assert_footer(pilot)
            assert "compare-panel" in {pid for _, pid in screen.panel_keys()}
            assert screen.view == ("loss" if screen.compact else "compare-panel")
            await assert_plot_rows(pilot, screen)
            if size in ((80, 24), (140, 45)):  # one short and one tall size, as test_run_screen
                await assert_panels_take_turns(pilot, screen)
        # the viewer's keys: l, s, v change the view; ? opens the help; q leaves
        await pilot.press("l", "s", "v")
        assert screen.log_y and screen.smoothing and screen.state.focus is not None
        await pilot.press("question_mark")
        assert not isinstance(app.screen, ViewScreen)
        await pilot.press("escape")
        assert app.screen is screen
        await pilot.press("q")
    assert app.return_code in (0, None)


@sync
async def test_compare_escape_ends_it_and_ctrl_c_exits_130(tmp_path):
    job = FakeCompareJob(tmp_path)
    app = make_app(compare=(job, 1e-2))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare screen")
        await pilot.press("escape")
    assert app.return_code in (0, None) and not app.is_running
    app = make_app(experiment="dying-relu", start_paused=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+c")
    assert app.return_code == 130


@sync
async def test_the_layer_table_scrolls_from_the_keyboard_and_names_the_row_in_full():
    app = make_app(experiment="sigmoid-depth", steps=10, start_paused=True)
    async with app.run_test(size=(100, 30)) as pilot:  # the table under the plot
        screen = app.screen
        screen.runner.step(40)
        await settle(pilot, screen)
        await pilot.press("2")
        table = screen.query_one(LayerTable)
        assert table.has_focus and table.row_count == 10  # 5 layers x 2 variants
        visible = table.region.height - 3  # border and header
        assert visible < table.row_count  # the last rows start hidden ...
        await pilot.press(*["down"] * 9)
        await pilot.pause()
        assert table.cursor_row == table.row_count - 1  # ... and are reached with the keys
        assert table.scroll_y > 0
        assert "row 10/10: batchnorm · layer 9 · Sigmoid" in str(table.border_subtitle)
        await pilot.press("right", "right", "right")
        await pilot.pause()
        assert table.scroll_x > 0  # the columns past 100 are reached too
        await pilot.press("l")  # the screen's keys still work while the table has the focus
        assert screen.log_y
        await pilot.press("q")


def test_compare_has_the_viewers_keys_and_shows_them():
    """CompareScreen was declared with inherit_bindings=False and no bindings: every key was dead."""
    view = ViewScreen._merged_bindings.key_to_bindings
    compare = CompareScreen._merged_bindings.key_to_bindings
    assert set(view) == set(compare)
    assert all(compare[key][0].action == view[key][0].action for key in view if key != "escape")
    assert compare["escape"][0].action == "done" and compare["escape"][0].show
    assert list(compare)[:2] == ["q", "question_mark"]  # first in the footer
