"""Open each of the library's real experiments in the app with tiny step counts."""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("textual")

from helpers import SIZE, sync, wait_for

from tui.app import DualnormApp, load_experiments
from tui.screens import RunScreen
from tui.widgets import LayerTable

REAL = load_experiments()
NAMES = [n for n in ("dying-relu", "sigmoid-depth", "init-sweep", "norm-zoo") if n in REAL]
HAS_MLX = importlib.util.find_spec("mlx") is not None


@pytest.mark.skipif(not NAMES, reason="the library's experiments are not registered")
@pytest.mark.parametrize("name", NAMES)
@sync
async def test_real_experiment_runs_in_the_app(name):
    # init-sweep: two of its 32 runs (one weight scale, with and without BN) keep the test short
    variants = REAL[name].variants[:2] if name == "init-sweep" else None
    app = DualnormApp(experiment=name, backend="numpy", steps=3, variants=variants)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, RunScreen)
        await wait_for(pilot, lambda: screen.runner.finished.is_set(), timeout=60, what=f"{name} finished")
        screen.poll(force=True)
        await pilot.pause()
        assert screen.runner.error is None, screen.runner.error
        assert screen.state.records
        assert screen.state.backend == "numpy"
        assert {r.backend for r in screen.state.records} == {"numpy"}
        assert screen.query_one(LayerTable).row_count > 0
        if name == "dying-relu":  # its probe reaches the app (MLX's: test_dying_relu_on_mlx)
            assert any(v.probe for v in screen.state.variants.values())
        await pilot.press("q")


@pytest.mark.skipif("dying-relu" not in REAL, reason="dying-relu is not registered")
@pytest.mark.skipif(not HAS_MLX, reason="MLX is not installed")
@sync
async def test_dying_relu_on_mlx():
    """NumPy's run of the same: test_real_experiment_runs_in_the_app[dying-relu]."""
    backend = "mlx"
    app = DualnormApp(experiment="dying-relu", backend=backend, steps=5)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.runner.finished.is_set(), timeout=60)
        screen.poll(force=True)
        assert screen.runner.error is None, screen.runner.error
        assert {r.backend for r in screen.state.records} == {backend}
        assert any(v.probe for v in screen.state.variants.values())
        await pilot.press("q")
