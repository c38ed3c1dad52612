"""The UI as a viewer: run dirs and JSON Lines files, followed live, overlaid, focused (Pilot)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("textual")

from helpers import SIZE, make_app, sync, wait_for
from textual.widgets import OptionList, Static

import dualnorm
from dualnorm.records import LayerStats, StepRecord
from tui.app import check_paths, main
from tui.follow import RunFollower
from tui.screens import ErrorScreen, RunScreen, StartScreen, ViewScreen
from tui.state import RecordBuffer
from tui.widgets import LayerTable, LossPlot

ROOT = Path(__file__).resolve().parents[2]


def _layer(name: str, mean: float) -> LayerStats:
    return LayerStats(name, "ReLU", mean, 1.0, 0.0, 2.0, hist_counts=[1, 2, 3], hist_edges=[0, 1, 2, 3])


def _write_run(
    path: Path, name: str, variants=("main",), steps: int = 5, experiment: str | None = None
) -> Path:
    for variant in variants:
        run = dualnorm.track(name=name, dir=path if len(variants) == 1 else path.with_name(f"{path.name}-{variant}"),
                             experiment=experiment, variant=variant)  # fmt: skip
        for step in range(1, steps + 1):
            run.log(step, loss=1.0 / step)
        run.finish()
    return path


def _jsonl(path: Path, variants, steps: int = 3) -> Path:
    lines = []
    for i, v in enumerate(variants):
        for step in range(1, steps + 1):
            rec = StepRecord("zoo", v, step, 0, float(i + 1) / step, "numpy", layers=[_layer("0", float(i))])
            lines.append(rec.to_json())
    path.write_text("\n".join(lines) + "\n")
    return path


@sync
async def test_finished_run_is_shown_whole(tmp_path):
    run_dir = _write_run(tmp_path / "r", "mine", steps=7)
    app = make_app(runs=[str(run_dir)])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ViewScreen), what="view screen")
        screen = app.screen
        await wait_for(pilot, lambda: screen.runner.finished.is_set(), what="read")
        screen.poll(force=True)
        await pilot.pause()
        assert screen.state.variants["main"].steps == list(range(1, 8))
        assert (
            "finished" in screen.status_text().plain
            and "r (mine, numpy, finished)" in screen.status_text().plain
        )
        await pilot.press("escape")
        assert isinstance(app.screen, StartScreen)


@sync
async def test_follows_a_run_another_process_appends_to(tmp_path):
    run_dir = tmp_path / "live"
    script = textwrap.dedent(
        f"""
        import sys, time, dualnorm
        with dualnorm.track(name="live", dir={str(run_dir)!r}) as run:
            run.log(1, loss=1.0)
            sys.stdout.write("started\\n"); sys.stdout.flush()
            sys.stdin.readline()  # the test says when to go on
            for step in range(2, 6):
                run.log(step, loss=1.0 / step)
            sys.stdin.readline()
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "started"
        app = make_app(runs=[str(run_dir)])
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, ViewScreen))
            screen = app.screen
            await wait_for(pilot, lambda: screen.state.records_seen == 1, what="first record")
            assert "following" in screen.status_text().plain
            proc.stdin.write("go\n")
            proc.stdin.flush()
            # on the screen's own timer (no restart, no reopen)
            await wait_for(pilot, lambda: screen.state.records_seen == 5, what="appended records")
            assert screen.state.variants["main"].last_step == 5
            assert not screen.runner.finished.is_set()
            proc.stdin.write("end\n")
            proc.stdin.flush()
            proc.wait(60)
            await wait_for(pilot, lambda: screen.runner.finished.is_set(), what="finished status")
            assert "finished" in screen.status_text().plain
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()  # the pipes too: unclosed, they were ResourceWarnings
        proc.stdout.close()


@sync
async def test_overlay_of_several_runs_names_run_and_variant(tmp_path):
    a = _write_run(tmp_path / "alpha", "alpha", steps=4)
    b = _jsonl(tmp_path / "beta.jsonl", ("plain", "batchnorm"))
    app = make_app(runs=[str(a), str(b)])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ViewScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.runner.finished.is_set())
        screen.poll(force=True)
        await pilot.pause()
        assert list(screen.state.variants) == ["alpha/main", "beta/plain", "beta/batchnorm"]
        plot = screen.query_one(LossPlot)
        legend = plot.legend_text.plain
        for name in ("alpha/main", "beta/plain", "beta/batchnorm"):
            assert name in legend
        assert len(plot._datasets) == 3
        # one colour per run+variant, each run's records kept apart
        assert len(set(screen.state.styles.values())) == 3
        assert screen.state.variants["beta/batchnorm"].losses == [2.0, 1.0, 2.0 / 3]


def test_follower_line_style_per_run_is_configurable(tmp_path):
    from tui.follow import RunSource

    a = _write_run(tmp_path / "a", "a")
    b = _write_run(tmp_path / "b", "b")
    buf = RecordBuffer()
    f = RunFollower([RunSource(a, label="numpy-run", style="blue"), RunSource(b, style="yellow")], buf)
    f.start()
    assert {r.variant for r in buf.drain()} == {"numpy-run/main", "b/main"}
    assert f.styles == {"numpy-run/main": "blue", "b/main": "yellow"}


@sync
async def test_variant_selector_with_many_variants(tmp_path):
    names = [f"v{i}" for i in range(12)]
    path = _jsonl(tmp_path / "many.jsonl", names)
    app = make_app(runs=[str(path)])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ViewScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.runner.finished.is_set())
        screen.poll(force=True)
        await pilot.pause()
        plot = screen.query_one(LossPlot)
        assert "(+4 more; v/V: focus one)" in plot.legend_text.plain  # 8 drawn, the rest named as hidden
        table = screen.query_one(LayerTable)
        assert "latest variant(s)" in str(screen.query_one("#layers").border_title)
        await pilot.press("v")  # focus the first variant
        await pilot.pause()
        assert screen.state.focus == "v0"
        assert {k.split("/")[0] for k in table._row_keys} == {"v0"}
        assert "showing v0" in str(screen.query_one("#layers").border_title)
        assert "v0" in plot.legend_text.plain  # the focused curve is drawn even if it is old
        assert "showing v0" in screen.status_text().plain
        await pilot.press("V", "V")  # back past "latest" to the last variant
        await pilot.pause()
        assert screen.state.focus == "v11"
        assert {k.split("/")[0] for k in table._row_keys} == {"v11"}


@sync
async def test_corrupt_middle_record_shows_earlier_records_and_names_file_and_line(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", ("a",), steps=4)
    lines = path.read_text().splitlines()
    lines[2] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    app = make_app(runs=[str(path)])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ViewScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.runner.finished.is_set())
        screen.poll(force=True)
        await pilot.pause()
        assert screen.state.variants["a"].steps == [1, 2]
        status = screen.status_text().plain
        assert "error" in status and f"{path}: line 3" in status


@sync
async def test_torn_last_line_of_an_interrupted_run_is_skipped_with_a_warning(tmp_path):
    run = dualnorm.track(dir=tmp_path / "t")
    run.log(1, loss=1.0)
    run.writer.fh.write('{"experiment": "t", "va')
    run.writer.fh.flush()
    run.writer.finish("interrupted")
    app = make_app(runs=[str(tmp_path / "t")])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ViewScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.runner.warnings, what="torn-line warning")
        assert "line 2 is cut short" in screen.runner.warnings[0]
        # the follower reads on start; the screen applies what it read on its next tick
        await wait_for(pilot, lambda: screen.state.records_seen >= 1, what="the complete record")
        assert screen.runner.error is None and screen.state.records_seen == 1


def test_a_path_that_is_not_a_run_is_refused_before_the_ui_starts(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "nope", tmp_path / "empty"):
        assert main([str(bad)]) == 2
        out = capsys.readouterr().out.strip()
        assert str(bad) in out and "expected a run directory" in out and len(out.splitlines()) == 1


def test_unwritable_export_dir_is_refused_before_the_ui_starts(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert check_paths([], str(tmp_path / "f")) is not None
    assert main(["--export-dir", "/proc/dualnorm-exports"]) == 2
    assert "/proc/dualnorm-exports" in capsys.readouterr().out


@sync
async def test_start_screen_lists_recent_runs_and_enter_opens_one(tmp_path):
    root = tmp_path / "dualnorm-runs"
    _write_run(root / "old-run", "old", steps=3, experiment="my-exp")
    _write_run(root / "new-run", "new", steps=9)
    app = make_app(runs_root=str(root))
    async with app.run_test(size=SIZE) as pilot:
        runs = app.screen.query_one("#runs", OptionList)
        assert runs.option_count == 2
        first = runs.get_option_at_index(0).prompt.plain
        assert "new-run" in first and "9 steps" in first and "finished" in first and "numpy" in first
        assert "my-exp" in runs.get_option_at_index(1).prompt.plain
        await pilot.press("tab")
        assert runs.has_focus
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ViewScreen))
        await wait_for(pilot, lambda: app.screen.state.records_seen == 9)


@sync
async def test_user_experiment_from_a_file_runs_in_the_ui(tmp_path):
    from dualnorm.experiments.loading import load_experiment

    target = tmp_path / "mine.py"
    shutil.copy(ROOT / "tests" / "experiments" / "user_exp_source.py", target)
    wider = load_experiment(f"{target}:Wider")
    app = make_app()
    app.experiments["wider"] = wider  # as main() does for -x file.py:Wider
    async with app.run_test(size=SIZE) as pilot:
        app.open_run("wider")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.runner.finished.is_set())
        screen.poll(force=True)
        assert {"w2", "w16"} <= set(screen.state.variants)


@sync
async def test_user_experiment_raising_while_training_shows_its_traceback(tmp_path):
    from dualnorm.experiments.loading import load_experiment

    target = tmp_path / "mine.py"
    shutil.copy(ROOT / "tests" / "experiments" / "user_exp_source.py", target)
    app = make_app()
    app.experiments["broken"] = load_experiment(f"{target}:Broken")
    async with app.run_test(size=SIZE) as pilot:
        app.open_run("broken")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.runner.finished.is_set())
        screen.poll(force=True)
        await pilot.pause()
        panel = screen.query_one("#traceback-panel")
        assert panel.display
        text = str(screen.query_one("#traceback", Static).render())
        assert "Traceback" in text and "on purpose" in text and "mine.py" in text
        await pilot.press("escape")  # the UI is still alive
        assert isinstance(app.screen, StartScreen)


@sync
async def test_user_experiment_that_fails_to_import_shows_its_traceback(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import not_a_module_anywhere\n")
    from dualnorm.experiments.loading import ExperimentLoadError, load_experiment

    with pytest.raises(ExperimentLoadError) as info:
        load_experiment(f"{bad}:X")
    app = make_app(load_error=(str(info.value), info.value.details))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        text = str(app.screen.query_one("#error-details", Static).render())
        assert "ModuleNotFoundError" in text and "Traceback" in text
        await pilot.press("escape")
        assert isinstance(app.screen, StartScreen)


def test_main_turns_a_broken_file_into_an_error_screen(tmp_path, monkeypatch):
    bad = tmp_path / "bad.py"
    bad.write_text("1/0\n")
    seen = {}

    import tui.app as app_mod

    def fake_run(self):
        seen["load_error"] = self.load_error

    monkeypatch.setattr(app_mod.DualnormApp, "run", fake_run)
    assert main(["-x", f"{bad}:X"]) == 0
    assert "ZeroDivisionError" in seen["load_error"][1]


@sync
async def test_export_to_an_unwritable_directory_says_so_and_writes_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    app = make_app(experiment="diverge", steps=10, export_dir=str(tmp_path / "file"))
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.runner.finished.is_set())
        await pilot.press("e")
        await pilot.pause(0.1)
        messages = [n.message for n in app._notifications]
        assert any("expected a directory, found a file" in m or "is a file" in m for m in messages), messages
        assert screen.last_export is None and (tmp_path / "file").read_text() == "x"


def test_a_long_file_loads_over_several_ticks_and_then_finishes(tmp_path, monkeypatch):
    path = _jsonl(tmp_path / "long.jsonl", ("a",), steps=200)
    monkeypatch.setattr(RunFollower, "READ_BYTES", 4096)
    buf = RecordBuffer()
    f = RunFollower([path], buf)
    f.start()
    ticks = 1
    while not f.finished.is_set():
        f.poll()
        ticks += 1
        assert ticks < 1000
    got = buf.drain()
    assert ticks > 3 and [r.step for r in got] == list(range(1, 201))


def test_frozen_view_reads_nothing_and_steps_one_record_at_a_time(tmp_path):
    path = _jsonl(tmp_path / "f.jsonl", ("a",), steps=50)
    buf = RecordBuffer()
    f = RunFollower([path], buf, paused=True)
    f.start()
    f.poll()
    assert f.sources[0].reader.offset == 0 and not len(buf)  # nothing read while frozen
    f.step(1)
    f.poll()
    assert [r.step for r in buf.drain()] == [1]
    f.resume()
    f.poll()
    assert [r.step for r in buf.drain()] == list(range(2, 51))


@sync
async def test_the_viewer_opens_what_export_wrote(tmp_path):
    """`e` writes records.jsonl and run.json (no meta.json): `dualnorm tui EXPORT_DIR` shows it whole."""
    app = make_app(experiment="dying-relu", steps=12, export_dir=str(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, screen.runner.finished.is_set, what="run finished")
        screen.poll(force=True)
        await pilot.press("e")
        await app.workers.wait_for_complete()
        await wait_for(pilot, lambda: screen.last_export is not None, what="export")
        exported = screen.last_export
        expected = {name: list(v.steps) for name, v in screen.state.variants.items()}
    assert not (exported / "meta.json").exists() and (exported / "run.json").exists()
    assert check_paths([str(exported)], None) is None
    app = make_app(runs=[str(exported)])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ViewScreen), what="view screen")
        screen = app.screen
        await wait_for(pilot, screen.runner.finished.is_set, what="read")
        screen.poll(force=True)
        await pilot.pause()
        assert {name: v.steps for name, v in screen.state.variants.items()} == expected
        status = screen.status_text().plain
        assert "finished" in status and "(dying-relu, numpy, exported)" in status
        assert screen.query_one(LayerTable).row_count > 0
