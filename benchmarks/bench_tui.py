"""How much does watching cost? Training steps/s with and without the terminal UI attached,
and the redraw time of the 16-plot init-sweep grid.

    python benchmarks/bench_tui.py [--experiment dying-relu] [--steps 3000] [--backend numpy]

Uses the library's real experiments when they are registered; otherwise (or with ``--fake``)
a deterministic stand-in from tests/tui/fakes.py with a small NumPy workload per step.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

# one BLAS thread: the measurement is about the UI thread competing with training, not BLAS scaling
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "tui"))

from dualnorm.experiments.base import RunConfig  # noqa: E402
from tui.app import DualnormApp, load_experiments  # noqa: E402
from tui.runner import TrainingRunner  # noqa: E402
from tui.screens import RunScreen  # noqa: E402
from tui.state import RecordBuffer, RunState  # noqa: E402
from tui.widgets import SweepGrid  # noqa: E402


def fake_registry(steps: int) -> dict:
    import numpy as np
    from fakes import FakeExperiment, fake_experiments

    class Loaded(FakeExperiment):
        """The fake relu experiment plus a NumPy workload per step (about a small MLP's worth)."""

        def run(self, config, stop=None):
            rng = np.random.default_rng(0)
            a = rng.standard_normal((256, 256))
            for rec in super().run(config, stop):
                for _ in range(4):
                    a = np.tanh(a @ a.T / 256.0)
                yield rec

    exps = fake_experiments(steps=steps)
    exps["dying-relu"] = Loaded("dying-relu", "relu", steps=steps)
    return exps


def steps_without_ui(experiment, config: RunConfig) -> tuple[float, int]:
    """The same thread + buffer the UI uses, but nobody drawing."""
    buf = RecordBuffer()
    runner = TrainingRunner(experiment, config, buf)
    drained: list = []
    stop_drain = threading.Event()

    def drain() -> None:  # a consumer that only empties the buffer, like the UI timer
        while not stop_drain.wait(0.1):
            drained.extend(buf.drain())

    t = threading.Thread(target=drain)
    t.start()
    runner.start()
    runner.finished.wait()
    elapsed = runner.finished_at - runner.started_at
    stop_drain.set()
    t.join()
    drained.extend(buf.drain())
    state = RunState(experiment.variants)
    state.apply(drained)
    runner.stop()
    return elapsed, state.total_steps


async def steps_with_ui(exps: dict, name: str, config: RunConfig, size=(160, 50)) -> tuple[float, int, float]:
    """Steps/s with the app drawing, and the UI thread's CPU use (fraction of one core)."""
    app = DualnormApp(exps, backends=[config.backend or "numpy"], backend=config.backend or "numpy")
    app.steps = config.steps
    async with app.run_test(size=size) as pilot:
        cpu0 = time.thread_time()
        t0 = time.perf_counter()
        app.open_run(name)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, RunScreen)
        while not screen.runner.finished.is_set():
            await pilot.pause(0.05)
        ui_cpu = (time.thread_time() - cpu0) / (time.perf_counter() - t0)
        elapsed = screen.runner.finished_at - screen.runner.started_at
        screen.poll(force=True)
        steps = screen.state.total_steps
        await pilot.press("q")
    return elapsed, steps, ui_cpu


async def sweep_redraw(exps: dict, size=(160, 50), repeats: int = 20) -> tuple[float, float]:
    """Median ms to rebuild and render all 16 sweep plots (and one cell) from a full RunState."""
    app = DualnormApp(exps, backends=["numpy"], backend="numpy", experiment="init-sweep", start_paused=True)
    async with app.run_test(size=size) as pilot:
        screen = app.screen
        exp = screen.experiment
        # fill the state directly (the thread stays paused), then mount the grid
        records = list(exp.run(RunConfig(steps=getattr(app, "steps", None) or exp.default_steps)))
        screen._pending.merge(screen.state.apply(records))
        screen.poll(force=True)
        grid = screen.query_one(SweepGrid)
        while not (len(grid.cells) == 16 and all(c.is_mounted for c in grid.cells)):
            await pilot.pause(0.05)
        await pilot.pause(0.2)
        full, one = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            grid.redraw(screen.state)
            for cell in grid.cells:
                cell._render_plot()
            full.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            grid.redraw(screen.state, {7})
            grid.cells[7]._render_plot()
            one.append(time.perf_counter() - t0)
        await pilot.press("q")
    return statistics.median(full) * 1e3, statistics.median(one) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="dying-relu")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument(
        "--fake", action="store_true", help="use the fake experiments even if real ones exist"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    real = {} if args.fake else load_experiments()
    if args.experiment in real:
        exps, source = real, "real"
    else:
        exps, source = fake_registry(args.steps or 2000), "fake"
    exp = exps[args.experiment]
    steps = args.steps or min(exp.default_steps, 3000)
    config = RunConfig(backend=args.backend, steps=steps)

    bare, ui, cpu = [], [], []
    for _ in range(args.repeats):
        t, n = steps_without_ui(exp, config)
        bare.append(n / t)
        t, n, c = asyncio.run(steps_with_ui(exps, args.experiment, config))
        ui.append(n / t)
        cpu.append(c)
    sweep_exps = real if "init-sweep" in real else fake_registry(60)
    full_ms, one_ms = asyncio.run(sweep_redraw(sweep_exps))

    b, u = statistics.median(bare), statistics.median(ui)
    rows = [
        ("experiment", f"{args.experiment} ({source}), {steps} steps/variant, backend {args.backend}"),
        ("steps/s without UI", f"{b:,.0f}"),
        ("steps/s with UI (headless)", f"{u:,.0f}"),
        ("UI overhead (wall clock)", f"{(1 - u / b) * 100:+.1f} %"),
        ("UI thread CPU (share of one core)", f"{statistics.median(cpu) * 100:.1f} %"),
        ("init-sweep grid: redraw 16 plots", f"{full_ms:.1f} ms"),
        ("init-sweep grid: redraw 1 plot", f"{one_ms:.2f} ms"),
    ]
    try:
        from rich.table import Table

        from dualnorm._console import output_console

        table = Table(title=f"dualnorm TUI benchmark (median of {args.repeats})")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for row in rows:
            table.add_row(*row)
        output_console().print(table)
    except ImportError:
        for k, v in rows:
            print(f"{k:<36} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
