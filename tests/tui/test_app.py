"""The app driven headless with Pilot, against the deterministic fake experiments."""

from __future__ import annotations

import csv
import json
import threading

import pytest

pytest.importorskip("textual")

from helpers import SIZE, burst, make_app, settle, sync, wait_for
from textual.widgets import OptionList

from dualnorm.records import StepRecord
from tui.screens import ConfigModal, HelpScreen, RunScreen, StartScreen
from tui.widgets import HistogramPanel, LayerTable, LossPlot, ProbeTable, SweepGrid


def _train_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dualnorm-train") and t.is_alive()]


@sync
async def test_start_screen_lists_experiments_and_enter_starts_default():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, StartScreen)
        options = app.screen.query_one(OptionList)
        assert options.option_count == 4
        assert options.get_option_at_index(options.highlighted).id == "dying-relu"
        assert "numpy" in str(app.screen.query_one("#backend-line").render())
        await pilot.press("b")
        assert app.backend == "mlx"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="run screen")
        screen = app.screen
        assert screen.experiment.name == "dying-relu"
        assert screen.config.backend == "mlx"
        await wait_for(pilot, lambda: screen.runner.finished.is_set(), what="run finished")
        screen.poll(force=True)
        await pilot.pause()
        assert screen.state.total_steps == 120
        assert "finished" in screen.status_text().plain
        await pilot.press("q")
    assert not _train_threads()


@pytest.mark.parametrize("name", ["dying-relu", "sigmoid-depth", "init-sweep", "diverge"])
@sync
async def test_open_each_experiment(name):
    app = make_app(experiment=name, steps=30)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, RunScreen)
        await settle(pilot, screen)
        assert screen.state.records
        table = screen.query_one(LayerTable)
        assert table.row_count > 0
        if name == "dying-relu":
            probe = screen.query_one(ProbeTable)
            assert "probe" in screen.available and not probe.display  # a panel, one key away
            await pilot.press("4")
            assert probe.display and probe.has_focus and probe.row_count == 6
            assert probe.get_cell("batchnorm/after_bn", "x0") != "—"
            assert probe.get_cell("plain/after_bn", "x0") == "—"
        if name == "sigmoid-depth":
            hist = screen.query_one(HistogramPanel)
            await pilot.press("3")
            assert hist.display and [v.name for v in hist._variants] == ["plain", "batchnorm"]
        if name == "init-sweep":
            grid = screen.query_one(SweepGrid)
            await wait_for(pilot, lambda: len(grid.cells) == 16 and all(c.is_mounted for c in grid.cells))
            screen.poll(force=True)
            await pilot.pause()
            assert grid.display
            assert len(grid.cells[0]._datasets) == 2  # BN and plain curves
            assert grid.cells[15].border_title.startswith("1e-04 BN ")
        if name == "diverge":
            status = screen.status_text().plain
            assert "plain diverged at step 15" in status
            assert any("diverged" in (label or "") for label in screen.query_one(LossPlot)._v_lines_labels)
        await pilot.press("q")
    assert not _train_threads()


@sync
async def test_pause_step_and_table_changes():
    # a run that cannot end by itself (q stops it): 400 steps ended before the space was handled
    # when the UI stalled for ~1.6 s on a loaded machine, and then "n" stepped nothing
    app = make_app(experiment="sigmoid-depth", steps=10**6, delay=0.002)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.state.total_steps > 5, what="some steps")
        await pilot.press("space")
        assert screen.runner.paused
        await settle(pilot, screen)
        steps = screen.state.total_steps
        table = screen.query_one(LayerTable)
        before = table.get_row_at(0)
        await pilot.pause(0.3)
        screen.poll(force=True)
        assert screen.state.total_steps == steps  # paused: nothing moves
        assert "paused" in screen.status_text().plain
        await pilot.press("n")
        await settle(pilot, screen)
        assert screen.state.total_steps == steps + 1
        await pilot.press("full_stop", "n", "n")
        await settle(pilot, screen)
        assert screen.state.total_steps == steps + 4
        assert table.get_row_at(0) != before  # the statistics moved with training
        await pilot.press("space")
        await wait_for(pilot, lambda: screen.state.total_steps > steps + 20, what="resumed")
        await pilot.press("q")
    assert not _train_threads()


@sync
async def test_restart_switch_backend_and_config_modal():
    app = make_app(experiment="dying-relu", steps=50)
    async with app.run_test(size=SIZE) as pilot:
        first = app.screen
        await settle(pilot, first)
        await pilot.press("r")
        await wait_for(pilot, lambda: app.screen is not first, what="restart")
        second = app.screen
        assert isinstance(second, RunScreen) and not first.runner.alive
        await pilot.press("b")
        await wait_for(pilot, lambda: app.screen is not second, what="backend switch")
        third = app.screen
        assert third.config.backend == "mlx"
        await settle(pilot, third)
        assert third.state.backend == "mlx"  # the records come from the mlx run
        assert "backend mlx" in third.status_text().plain
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfigModal), what="modal")
        modal = app.screen
        modal.query_one("#lr").value = "0.5"
        modal.query_one("#seed").value = "7"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen is not third)
        fourth = app.screen
        assert fourth.config.lr == 0.5 and fourth.config.seed == 7 and fourth.config.backend == "mlx"
        # invalid input keeps the dialog open; escape cancels without restarting
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfigModal))
        app.screen.query_one("#lr").value = "-1"
        await pilot.press("enter")
        assert isinstance(app.screen, ConfigModal)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is fourth)
        await pilot.press("q")
    assert not _train_threads()


@sync
async def test_toggles_log_and_smoothing():
    app = make_app(experiment="dying-relu", steps=80)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await settle(pilot, screen)
        plot = screen.query_one(LossPlot)
        raw_max = max(max(d.y) for d in plot._datasets)
        await pilot.press("l")
        assert screen.log_y and "log-y" in screen.status_text().plain
        log_max = max(max(d.y) for d in plot._datasets)
        assert log_max == pytest.approx(raw_max and __import__("math").log10(raw_max))
        await pilot.press("s")
        assert screen.smoothing and "smoothed" in screen.status_text().plain
        await pilot.press("l", "s")
        assert not screen.log_y and not screen.smoothing
        assert max(max(d.y) for d in plot._datasets) == pytest.approx(raw_max)
        await pilot.press("q")


@sync
async def test_export_writes_parsable_files(tmp_path):
    app = make_app(experiment="diverge", steps=20, export_dir=str(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await settle(pilot, screen)
        await pilot.press("e")
        await app.workers.wait_for_complete()
        await wait_for(pilot, lambda: screen.last_export is not None, what="export")
        out = screen.last_export
        assert out.parent == tmp_path and out.name.startswith("diverge-")
        rows = list(csv.DictReader((out / "records.csv").read_text().splitlines()))
        assert len(rows) == len(screen.state.records) == 30
        lines = (out / "records.jsonl").read_text().splitlines()
        assert len(lines) == 30
        for line in lines:
            assert {"variant", "step", "loss", "layers"} <= set(json.loads(line))
        assert (out / "screenshot.svg").read_text().lstrip().startswith("<svg")
        assert (out / "layers.csv").exists()
        await pilot.press("q")


@sync
async def test_help_resize_and_rapid_keys():
    """Keys in any order never break the run screen: restarts one after the other, and a burst queued
    before any of it is handled (restarts and a backend switch while a restart is pending); esc
    queued right behind r still goes back to the start; no training thread is left behind."""
    app = make_app(experiment="sigmoid-depth", steps=60)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, RunScreen)
        for w, h in [(60, 20), (200, 60), (40, 12), (120, 40)]:
            await pilot.resize_terminal(w, h)
            await pilot.pause(0.05)
        await pilot.press(*"snlsnl", "space", "space", "n", ".", "l", "space")
        first = app.screen
        await pilot.press("r", "b")  # each handled in full: a restart, then a backend switch
        assert isinstance(app.screen, RunScreen) and app.screen is not first
        assert app.backend == "mlx" and app.screen.config.backend == "mlx"
        pending = app.screen
        burst(pilot, "r", "r", "b", "l", "space", "n", "b", "r")

        def settled() -> bool:
            screen = app.screen
            return isinstance(screen, RunScreen) and screen is not pending and not screen._leaving

        await wait_for(pilot, settled, what="the burst's restart")
        await pilot.pause(0.3)
        assert settled()
        await pilot.press("question_mark")  # the fresh screen takes keys
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, RunScreen)
        burst(pilot, "r", "escape")
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen), what="back to start")
        await pilot.press("q")
    assert not _train_threads()


@sync
async def test_ui_stays_responsive_during_a_slow_step():
    app = make_app(experiment="dying-relu", steps=3, delay=1.0)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.pause(0.1)
        await pilot.press("l")  # handled while the training thread sleeps inside a step
        assert screen.log_y
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape", "q")
    assert not _train_threads()


@sync
async def test_experiment_error_is_shown():
    from fakes import FakeExperiment

    class Broken(FakeExperiment):
        def run(self, config, stop=None):
            yield from super().run(config, stop)
            raise RuntimeError("boom")

    from tui.app import DualnormApp

    app = DualnormApp({"broken": Broken("broken", "relu", steps=3)}, experiment="broken", backends=["numpy"])
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.runner.finished.is_set())
        screen.poll(force=True)
        assert "experiment failed: RuntimeError: boom" in screen.status_text().plain
        await pilot.press("q")


def test_main_rejects_unknown_names(capsys):
    from tui.app import main

    assert main(["--experiment", "nope-not-real"]) == 2
    assert "unknown experiment" in capsys.readouterr().out
    assert main(["--backend", "fortran"]) == 2


@sync
async def test_sweep_cell_draws_plain_dotted_and_says_when_it_diverged():
    app = make_app(experiment="init-sweep", steps=12)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await settle(pilot, screen)
        grid = screen.query_one(SweepGrid)
        await wait_for(pilot, lambda: len(grid.cells) == 16 and all(c.is_mounted for c in grid.cells))
        plain = screen.state.sweep[0]["none"]
        last = screen.state.variants[plain]
        diverged = StepRecord(
            experiment="init-sweep",
            variant=plain,
            step=13,
            epoch=2,
            loss=float("nan"),
            backend="numpy",
            status="diverged",
            message="loss is nan at step 13",
            extra=dict(screen.state.records[-1].extra),
        )
        diverged.extra.update(scale_index=0, normalization="none")
        screen.state.apply([diverged])
        grid.redraw(screen.state, {0})
        await pilot.pause()
        cell = grid.cells[0]
        assert last.diverged_at == 13
        assert "plain diverged" in str(cell.border_subtitle)
        kinds = sorted(type(d).__name__ for d in cell._datasets)
        assert kinds == ["LinePlot", "ScatterPlot"]  # BN solid line, plain dotted
        await pilot.press("q")


@sync
async def test_lr_and_seed_stay_with_their_demo_and_the_backend_is_kept_and_shown():
    app = make_app(experiment="dying-relu", steps=20)
    async with app.run_test(size=SIZE) as pilot:
        first = app.screen
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfigModal), what="modal")
        app.screen.query_one("#lr").value = "0.01"
        app.screen.query_one("#seed").value = "7"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen is not first)
        changed = app.screen
        await pilot.press("b")
        await wait_for(pilot, lambda: app.screen is not changed, what="backend switch")
        status = app.screen.status_text().plain
        assert "backend mlx" in status and "lr 0.01 (default 0.01)" not in status
        assert "seed 7 (default 0)" in status  # changed from the demo's default: said so
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen), what="start screen")
        line = str(app.screen.query_one("#backend-line").render())
        assert "backend: mlx for every demo" in line and "each demo's defaults" in line
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="next demo")
        nxt = app.screen
        assert nxt.experiment.name == "sigmoid-depth"
        assert nxt.config.backend == "mlx" and nxt.config.lr is None and nxt.config.seed == 0
        assert "(default" not in nxt.status_text().plain
        await pilot.press("q")


@sync
async def test_restart_while_paused_runs_and_keeps_the_view():
    app = make_app(experiment="dying-relu", steps=30, start_paused=True)
    async with app.run_test(size=SIZE) as pilot:
        first = app.screen
        await pilot.press("l", "s", "v", "3")
        await pilot.press("r")
        await wait_for(pilot, lambda: app.screen is not first, what="restart")
        second = app.screen
        assert not second.runner.paused
        assert second.log_y and second.smoothing and second.state.focus == "plain"
        assert second.chosen_panel == first.chosen_panel
        await wait_for(pilot, second.runner.finished.is_set, what="the restarted run to finish")
        second.poll(force=True)
        assert second.state.total_steps == 60
        await pilot.press("q")


@sync
async def test_config_dialog_says_what_is_wrong_in_full():
    app = make_app(experiment="dying-relu", steps=10, start_paused=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfigModal), what="modal")
        modal = app.screen
        modal.query_one("#lr").value = "abc"
        await pilot.press("enter")
        await pilot.pause()
        label = modal.query_one("#config-error")
        message = "learning rate: 'abc' is not a number; type one like 0.01 or 1e-3"
        assert str(label.render()) == message
        assert label.region.height >= 2  # wrapped inside the dialog, never cut
        assert app.screen is modal
        await pilot.press("escape", "q")


@sync
async def test_status_line_per_variant_final_rate_and_the_probe_in_step():
    app = make_app(experiment="dying-relu", steps=40)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, screen.runner.finished.is_set, what="run finished")
        screen.poll(force=True)
        await pilot.pause()
        status = screen.status_text().plain
        assert "finished  variant 2/2 batchnorm · step 40 / 40" in status
        assert "avg " in status and " steps/s" in status and "— steps/s" not in status
        screen.poll(force=True)  # later ticks with nothing new keep the average
        assert screen.rate_text() == screen.rate_text() and screen.rate_text().startswith("avg ")
        probe = screen.query_one(ProbeTable)
        assert probe.get_cell("batchnorm/after_bn", "step") == "40"  # the same step as the status line
        notes = len(app._notifications)
        await pilot.press("v", "v", "v")
        assert len(app._notifications) == notes  # v says its focus in the status line, no pile of toasts
        await pilot.press("q")
