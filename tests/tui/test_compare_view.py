"""``dualnorm compare`` in the UI: the backends' runs followed live, overlaid, with the comparison panel."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("textual")

from helpers import SIZE, make_app, sync, wait_for
from rich.console import Console

from dualnorm.backends import available_labels, get_backend
from dualnorm.compare import CompareJob, compare_records
from dualnorm.tracking import read_run
from tui.compare import CompareScreen

needs_two = pytest.mark.skipif(
    not {"numpy", "mlx-cpu"} <= set(available_labels()), reason="needs NumPy and MLX on the CPU"
)


def _job(tmp_path, *run_args: str) -> CompareJob:
    backends = {label: get_backend(label) for label in ("numpy", "mlx-cpu")}
    args = ["--steps", "12", "--variants", "batchnorm", "--record-every", "4", *run_args]
    return CompareJob("dying-relu", backends, tmp_path / "cmp", run_args=args)


@needs_two
@sync
async def test_compare_screen_overlays_both_backends_and_agrees_with_the_files(tmp_path):
    job = _job(tmp_path)
    job.start()
    app = make_app(compare=(job, 1e-2))
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="the compare screen")
            screen = app.screen
            await wait_for(pilot, job.done.is_set, timeout=60, what="both backends' runs")
            await wait_for(pilot, screen.runner.finished.is_set, what="the viewer reaching the end")
            screen.poll(force=True)
            await pilot.pause()
            # one curve per backend, each in its backend's colour
            assert {"numpy/batchnorm", "mlx-cpu/batchnorm"} <= set(screen.state.variants)
            assert screen.state.styles["numpy/batchnorm"] != screen.state.styles["mlx-cpu/batchnorm"]
            # the live figures are those of the finished files, compared afresh
            files = {label: read_run(path)[0] for label, path in job.run_dirs.items()}
            expected = compare_records(files, 1e-2).backends["mlx-cpu"]
            live = screen.comparison.result().backends["mlx-cpu"]
            assert live.max_rel_loss_diff == expected.max_rel_loss_diff
            assert live.first_over_tol == expected.first_over_tol and live.steps == 12
            assert live.wall_s is not None and live.wall_s > 0  # the process's time, once it ended
            console = Console(width=160, file=io.StringIO(), record=True)
            console.print(screen.panel)
            panel = console.export_text()
            assert "backends vs numpy (tol 0.01)" in panel and "mlx-cpu" in panel
            assert f"{expected.max_rel_loss_diff:.2e}" in panel
    finally:
        job.stop()


@needs_two
@sync
async def test_a_backend_that_fails_to_start_is_named_and_the_ui_stays_up(tmp_path):
    job = _job(tmp_path, "--lr", "-1")  # refused by every child: exit 2 before any run directory exists
    job.start()
    app = make_app(compare=(job, 1e-2))
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="the compare screen")
            screen = app.screen
            await wait_for(pilot, job.done.is_set, timeout=60, what="the child to exit")
            await wait_for(pilot, lambda: screen.runner.error, what="the error on screen")
            assert "numpy: exit 2" in screen.runner.error
            assert screen.runner.sources[0].status == "failed"
            assert job.usage_error() is not None
            assert "error" in screen.status_text().plain
    finally:
        job.stop()
