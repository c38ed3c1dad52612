"""dualnorm.track on mlx.nn models: statistics, wrapped calls only for recording steps, the example.

The expected statistics are computed here from the layers called one by one on the
recorded step's batch (before its update), independently of the watcher.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
import mlx.optimizers as optim  # noqa: E402
from mlx import nn  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

import dualnorm  # noqa: E402

pytestmark = pytest.mark.mlx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))


def _model():
    mx.random.seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm(8), nn.ReLU(), nn.Linear(8, 3), nn.Sigmoid())


def _loss(model, x, y):
    return mx.mean(mx.square(model(x) - y))


def _outputs(model, x):
    """Each layer's output on x, calling the layers one by one (train mode; BN stats updated on a copy)."""
    saved = [dict(m.items()) for m in model.layers]
    outs, h = [], x
    for layer in model.layers:
        h = layer(h)
        outs.append(np.array(h, dtype=np.float64))
    for layer, state in zip(model.layers, saved, strict=True):
        layer.update(state)
    return outs


@pytest.mark.parametrize("host", [True, False], ids=["reduced-by-numpy", "reduced-on-device"])
def test_records_carry_activation_gradient_and_bn_statistics_by_module_path(tmp_path, host):
    model = _model()
    opt = optim.SGD(learning_rate=0.1)
    step_fn = nn.value_and_grad(model, _loss)
    rng = np.random.default_rng(0)
    expected = {}
    with dualnorm.track(model, dir=tmp_path / "run", every=3) as run:
        run._watcher.host = host  # CPU tensors go to NumPy by default; the device path is the same maths
        for step in range(1, 7):
            x = mx.array(rng.normal(size=(16, 4)).astype(np.float32))
            y = mx.array(rng.random((16, 3)).astype(np.float32))
            if step in (1, 3, 6):
                expected[step] = _outputs(model, x)
            loss, grads = step_fn(model, x, y)
            opt.update(model, grads)
            mx.eval(loss, model.parameters(), opt.state)
            run.log(step, loss=loss, grads=grads)
            if step in expected:
                expected[step] = (expected[step], dict(tree_flatten(grads)))
    records, meta = dualnorm.read_run(tmp_path / "run")
    assert meta["backend"] == "mlx.nn" and meta["status"] == "finished"
    recorded = {r.step: r for r in records if r.layers}
    assert sorted(recorded) == [1, 3, 6]
    names = ["layers.0", "layers.1", "layers.2", "layers.3", "layers.4"]
    for step, (outs, grads) in expected.items():
        layers = {layer.name: layer for layer in recorded[step].layers}
        assert list(layers) == names
        assert [layers[n].kind for n in names] == ["Linear", "BatchNorm", "ReLU", "Linear", "Sigmoid"]
        for name, a in zip(names, outs, strict=True):
            got = layers[name]
            assert got.act_mean == pytest.approx(a.mean(), rel=1e-5, abs=1e-6)
            assert got.act_std == pytest.approx(a.std(), rel=1e-5)
            assert (got.act_min, got.act_max) == (pytest.approx(a.min()), pytest.approx(a.max()))
            assert sum(got.hist_counts) == a.size and len(got.hist_edges) == len(got.hist_counts) + 1
            assert got.grad_norm is None  # no output gradients in MLX
            own = [np.array(g, dtype=np.float64) for k, g in grads.items() if k.rsplit(".", 1)[0] == name]
            if own:
                norm = math.sqrt(sum(float((g**2).sum()) for g in own))
                assert got.param_grad_norm == pytest.approx(norm, rel=1e-5)
            else:
                assert got.param_grad_norm is None
        assert layers["layers.2"].dead_frac == pytest.approx(float(np.mean(outs[2].max(axis=0) <= 0)))
        sig = outs[4]
        assert layers["layers.4"].saturated_frac == pytest.approx(float(np.mean((sig < 0.01) | (sig > 0.99))))
    bn = model.layers[1]
    last = {layer.name: layer for layer in recorded[6].layers}["layers.1"]
    assert last.gamma_mean == pytest.approx(float(mx.mean(bn.weight)), rel=1e-5)
    assert last.running_mean_mean == pytest.approx(float(mx.mean(bn.running_mean)), rel=1e-5)
    assert last.running_var_mean == pytest.approx(float(mx.mean(bn.running_var)), rel=1e-5)


def test_calls_are_wrapped_only_for_recording_steps_and_restored_after_finish(tmp_path):
    model = _model()
    classes = [type(m) for m in model.layers]
    step_fn = nn.value_and_grad(model, _loss)
    run = dualnorm.track(model, dir=tmp_path / "run", every=5)
    watcher = run._watcher
    calls, wrapped = [], []
    x, y = mx.ones((8, 4)), mx.zeros((8, 3))
    for step in range(1, 13):
        before = watcher.hook_calls
        loss, grads = step_fn(model, x, y)
        mx.eval(loss, grads)
        calls.append(watcher.hook_calls - before)
        run.log(step, loss=loss, grads=grads)
        wrapped.append(sum(type(m) is not c for m, c in zip(model.layers, classes, strict=True)))
    run.finish()
    assert calls == [5 if step in (1, 5, 10) else 0 for step in range(1, 13)]
    assert wrapped == [5 if step in (4, 9) else 0 for step in range(1, 13)]
    assert [type(m) for m in model.layers] == classes
    assert [r.step for r in dualnorm.read_run(tmp_path / "run")[0] if r.layers] == [1, 5, 10]


def test_dying_relu_example_in_mlx(tmp_path, capsys):
    import track_mlx

    dirs = track_mlx.main(["--steps", "20", "--every", "10", "--out", str(tmp_path)])
    plain = dualnorm.read_run(dirs["plain"])[0]
    assert len({r.loss for r in plain}) == 1 and plain[0].loss == pytest.approx(3.34e5, rel=0.01)
    for r in plain:
        if r.layers:
            linear, relu = r.layers
            assert [linear.name, relu.name] == ["layers.0", "layers.1"]
            assert relu.dead_frac == 1.0 and linear.param_grad_norm == 0.0
    bn = dualnorm.read_run(dirs["batchnorm"])[0]
    assert bn[-1].loss < bn[0].loss
    last = {layer.name: layer for layer in bn[-1].layers}
    assert last["layers.2"].dead_frac == 0.0 and last["layers.1"].running_var_mean > 1.0
    assert last["layers.0"].param_grad_norm > 0
    # reading back through the viewer's incremental reader gives the same records
    from dualnorm.tracking import RunReader

    reader = RunReader(dirs["batchnorm"])
    assert [r.to_dict() for r in reader.poll()] == [r.to_dict() for r in bn]
    assert reader.meta()["backend"] == "mlx.nn"


@pytest.mark.slow
def test_compare_screen_overlays_an_mlx_nn_reference_run_with_dualnorm(tmp_path):
    """``dualnorm compare dying-relu --backends numpy,mlx.nn`` live in the UI: both curves, one table."""
    pytest.importorskip("textual")
    import asyncio
    import io
    import time

    from rich.console import Console

    from dualnorm.backends import get_backend
    from dualnorm.compare import CompareJob, compare_records
    from dualnorm.references import reference_framework
    from tui.app import DualnormApp
    from tui.compare import CompareScreen

    backends = {"numpy": get_backend("numpy"), "mlx.nn": reference_framework("mlx.nn")}
    args = ["--steps", "12", "--variants", "batchnorm", "--record-every", "4"]
    job = CompareJob("dying-relu", backends, tmp_path / "cmp", run_args=args)

    async def scenario():
        app = DualnormApp({}, backends=["numpy"], backend="numpy", runs_root="none", compare=(job, 1e-2))
        async with app.run_test(size=(140, 45)) as pilot:
            end = time.monotonic() + 60
            while not (isinstance(app.screen, CompareScreen) and job.done.is_set()
                       and app.screen.runner.finished.is_set()):  # fmt: skip
                assert time.monotonic() < end, "the compare runs did not finish"
                await pilot.pause(0.05)
            screen = app.screen
            screen.poll(force=True)
            await pilot.pause()
            console = Console(width=160, file=io.StringIO(), record=True)
            console.print(screen.panel)
            return set(screen.state.variants), screen.comparison.result(), console.export_text()

    job.start()
    try:
        curves, live, panel = asyncio.run(scenario())
    finally:
        job.stop()
    assert {"numpy/batchnorm", "mlx.nn/batchnorm"} <= curves
    files = {label: dualnorm.read_run(path)[0] for label, path in job.run_dirs.items()}
    expected = compare_records(files, 1e-2).backends["mlx.nn"]
    assert live.backends["mlx.nn"].max_rel_loss_diff == expected.max_rel_loss_diff < 1e-4
    assert live.backends["mlx.nn"].steps == 12 and "mlx.nn" in panel
